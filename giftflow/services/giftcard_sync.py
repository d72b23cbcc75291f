"""The gift-card sync as a sync of the engine: what Stripe should hold comes from the domain's reconcile, the
diff and the action from the engine (domain/sync_plan.py, configured by domain/giftcard_sync.yaml), the writes
from the one customer writer, through the one runner (services/sync_runner.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import stripe

from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.domain.giftcard import (
    METADATA_KEYS,
    PLAN_COLUMNS,
    SKIP,
    SYNC,
    customers_frame,
    match_redemptions,
    wanted_by_customer,
)
from giftflow.domain.sync_plan import plan_sync
from giftflow.domain.sync_spec import SyncSpec
from giftflow.domain.vocabulary import Action
from giftflow.services.customer_mirror import refresh_customer_mirror
from giftflow.services.sync_runner import Planned

_PREFIXED = {k: f"metadata.{k}" for k in METADATA_KEYS}


# The mirror is relisted whole once its last full listing is older than this; younger, a run looks up only the
# customers its range can match and the mirror lacks.
MIRROR_RELIST_AFTER_S = 86_400
# The events sensor keeps the mirror current while its last tick that applied customer events is this recent.
EVENTS_FRESH_S = 120


@dataclass
class MirrorRefresh:
    """How a run brought the mirror up to date for its range: `events` (kept current by the events sensor),
    `reused` (younger than GIFTFLOW_CUSTOMER_MIRROR_MAX_AGE_S), `lookup` or `relist`; the Stripe calls it took."""

    how: str
    calls: int
    age_s: float | None
    looked_up: LookedUp | None = None


def refresh_mirror_for_range(
    stripe_api: StripeClient,
    store: GiftflowStore,
    start: datetime,
    end: datetime,
    *,
    max_age_s: float = 0,
    now: datetime | None = None,
) -> MirrorRefresh:
    """The gift-card sync's mirror for the redemptions in [start, end) (already in the store): nothing while the
    events sensor keeps it current; a whole relisting only when it was never filled or is a day old; otherwise
    a look-up of the customers the range can match and the mirror lacks (`look_up_range_customers`)."""
    now = now or datetime.now(timezone.utc)
    refreshed = store.customers_refreshed_at()
    events_synced = store.get_state("customers_events_synced_at")
    age = (now - refreshed).total_seconds() if refreshed else None
    young = age is not None and age < MIRROR_RELIST_AFTER_S
    if young and events_synced and (now - datetime.fromisoformat(events_synced)).total_seconds() < EVENTS_FRESH_S:
        return MirrorRefresh("events", 0, age)
    if age is not None and age < max_age_s:
        return MirrorRefresh("reused", 0, age)
    if young:
        looked = look_up_range_customers(stripe_api, store, start, end)
        return MirrorRefresh("lookup", looked.calls, age, looked)
    return MirrorRefresh("relist", refresh_customer_mirror(stripe_api, store), age)


@dataclass
class LookedUp:
    """What `look_up_range_customers` asked Stripe: e-mails listed, linked ids retrieved, customers mirrored."""

    emails: int = 0
    ids: int = 0
    found: int = 0

    @property
    def calls(self) -> int:
        return self.emails + self.ids


def look_up_range_customers(stripe_api: StripeClient, store: GiftflowStore, start: datetime, end: datetime) -> LookedUp:
    """Bring into the mirror the Stripe customers that redemptions in [start, end) can match and the mirror does
    not hold: one `customers.list(email=...)` per distinct e-mail not mirrored (as typed, trimmed, and
    lower-cased: Stripe's filter is case-sensitive) and one retrieve per linked `stripe_customer_id` not
    mirrored. Its cost grows with the range's unknown customers, not with the account: customers already
    mirrored are kept fresh by giftflow's own writes (and the events sensor where it runs), and the whole mirror
    is relisted once it is a day old (the caller's choice)."""
    found_at = datetime.now(timezone.utc)
    day = store.load_redemptions(start=start, end=end)
    out, rows, gone = LookedUp(), [], []  # type: tuple[LookedUp, list[dict], list[str]]
    ids = set(day["stripe_customer_id"].dropna())
    known = store.load_customers(ids, emails=day["email_norm"].dropna().unique())
    known_ids, known_emails = {c["id"] for c in known}, {(c.get("email") or "").strip().lower() for c in known}
    spellings: dict[str, set[str]] = {}
    for norm, raw in zip(day["email_norm"], day["email"], strict=True):
        if isinstance(norm, str) and norm and norm not in known_emails:
            spellings.setdefault(norm, {norm}).update({raw.strip()} if isinstance(raw, str) and raw.strip() else ())
    for norm in sorted(spellings):
        for email in sorted(spellings[norm]):
            rows += stripe_api.list_customers_by_email(email)
            out.emails += 1
    for customer_id in sorted(ids - known_ids):
        out.ids += 1
        try:
            obj = stripe_api.retrieve("customers", customer_id)
        except stripe.InvalidRequestError:  # no such customer: matching falls back to the e-mail
            continue
        if obj.get("deleted"):
            gone.append(customer_id)
        else:
            rows.append(obj)
    # Never taken back by an older copy: a write or event mirrored after `found_at` wins.
    store.upsert_customers(list({r["id"]: r for r in rows}.values()), as_of=found_at)
    if gone:
        store.delete_customers(gone)
    out.found = len({r["id"] for r in rows})
    return out


def plan_giftcard_day(store: GiftflowStore, day_start: datetime, day_end: datetime, spec: SyncSpec) -> Planned:
    """The gift-card sync's plan for one day, from the store as it is now: every customer touched by the day's
    redemptions, with all of their redemptions of all days. Reads only the customers the day can match, so its
    cost grows with the day, not with the account."""
    day = store.load_redemptions(start=day_start, end=day_end)
    customers = customers_frame(
        store.load_customers(day["stripe_customer_id"].dropna().unique(), emails=day["email_norm"].dropna().unique())
    )
    # A customer's values come from all their days: widen to every redemption linked to them.
    touched = match_redemptions(day, customers)["customer_id"].dropna().unique()
    emails = set(customers.loc[customers["customer_id"].isin(touched), "email_norm"].dropna())
    emails |= set(day["email_norm"].dropna())
    ids = set(touched) | set(day["stripe_customer_id"].dropna())
    # The day itself too: anonymous redemptions match neither an e-mail nor an id, and are reported.
    history = store.load_redemptions(start=day_start, end=day_end, emails=emails, customer_ids=ids)
    # Every customer the history can match, so matching sees the same candidates as with the whole mirror.
    customers = customers_frame(
        store.load_customers(history["stripe_customer_id"].dropna().unique(), emails=history["email_norm"].dropna().unique())
    )
    plan = plan_customer_updates(history, customers, day_start, day_end, spec)
    return Planned(plan, read=len(plan), left_out=int((plan["action"] == SKIP).sum()))


def plan_customer_updates(
    redemptions: pd.DataFrame, customers: pd.DataFrame, day_start: datetime, day_end: datetime, spec: SyncSpec
) -> pd.DataFrame:
    """One row per customer touched by a redemption in [day_start, day_end), with what to do under `spec` (the
    gift-card sync's configuration of the engine, in update or upsert mode): the domain's wanted values, diffed
    by the engine against the customers they match. `redemptions` is every day giftflow has seen."""
    plan = wanted_by_customer(redemptions, customers, day_start, day_end, spec.mode)
    if plan.empty:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    return _decide(spec, plan, customers)


def _decide(spec: SyncSpec, plan: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """The engine's plan for the rows not left out: their wanted values against the customers reconcile matched
    them to (`_row`, a position in `customers`), so the engine matches nothing again. The rows come ordered by
    customer_id, then e-mail, missing last; they leave ordered by action, then that order.

    The engine gets every row, the left-out ones as invalid (their action and reason are put back after), in
    the order the plan leaves in when every matched customer is an update, as on a day's run (each touched
    customer has a new redemption): rows to create, matched rows, rows left out. Most plans then need no
    reordering, and no column is spread over the left-out rows."""
    n = len(plan)
    sync = (plan["action"] == SYNC).to_numpy()
    row = plan["_row"].fillna(-1).to_numpy(dtype=np.int64) if "_row" in plan else np.full(n, -1)
    arranged = np.concatenate([np.flatnonzero(sync & (row < 0)), np.flatnonzero(sync & (row >= 0)), np.flatnonzero(~sync)])
    left_out = np.arange(int(sync.sum()), n)  # their places in `arranged`

    def column(name: str) -> np.ndarray:
        return plan[name].to_numpy(dtype=object)[arranged]

    found = row[arranged]
    found[left_out] = -1
    ids, emails = column("customer_id"), column("email")
    wanted = _objects(
        {
            "row_key": np.where(found >= 0, ids, emails),
            "given_id": ids,
            "email_norm": emails,
            "email": emails,
            **{c: column(c) for c in ("name", "phone")},
            **{f"metadata.{k}": column(k) for k in METADATA_KEYS},
        }
    )
    # Every customer, by position: no copy of the rows, no index to hash.
    current = pd.DataFrame(
        {_PREFIXED.get(c, c): customers[c] for c in customers.columns if c != "customer_id"}, copy=False
    ).set_axis(pd.Index(customers["customer_id"], copy=False))
    decided = plan_sync(spec, wanted, pd.Series(SKIP, index=left_out, dtype=object), current, found=found)

    action = decided["action"].to_numpy(dtype=object, copy=True)
    action[left_out] = SKIP
    reason = decided["reason"].to_numpy(dtype=object, copy=True)
    reason[left_out] = column("reason")[left_out]
    ranks = pd.Index(
        [str(a) for a in (Action.CREATE, Action.UPDATE, Action.NONE, Action.REJECT, SKIP)], dtype=object
    )  # as the plan holds them
    order = np.argsort(ranks.get_indexer(action), kind="stable")
    in_order = bool((order == np.arange(n)).all())

    def ordered(values: np.ndarray) -> np.ndarray:
        return values if in_order else values[order]

    final = ordered(arranged)
    out: dict[str, pd.Series | np.ndarray] = {
        c: plan[c].take(final).reset_index(drop=True) for c in PLAN_COLUMNS if c != "changed_keys"
    }
    out["action"], out["reason"] = ordered(action), ordered(reason)
    out["changed_keys"] = ordered(decided["changed"].to_numpy(dtype=object))
    # What the writer needs: the engine's own columns, for the rows it decided (None on the left-out ones).
    for c in decided.columns:
        if c not in out:
            values = decided[c].to_numpy(dtype=object)
            if any(v is not None for v in values[left_out]):
                values = values.copy()
                values[left_out] = None
            out[c] = ordered(values)
    return pd.DataFrame(
        {c: v if isinstance(v, pd.Series) else pd.Series(v, dtype=object, copy=False) for c, v in out.items()}, copy=False
    )


def _objects(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A frame of object columns as given: pandas would otherwise scan each to infer a string dtype."""
    return pd.DataFrame({k: pd.Series(v, dtype=object, copy=False) for k, v in columns.items()}, copy=False)
