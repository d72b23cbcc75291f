"""Gift-card sync reconciliation: redemptions x Stripe customers -> one plan row per customer.

Pure pandas, no I/O: the rules of giftflow-contract.md ("The gift-card sync") live here and only here.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

METADATA_KEYS = (
    "giftcard_redeemed_total",
    "giftcard_currency",
    "giftcard_redemptions",
    "giftcard_last_redeemed_at",
    "giftcard_last4",
)
# Removed (set to "" at Stripe) when a customer has no completed redemption left.
REMOVABLE_KEYS = ("giftcard_currency", "giftcard_last_redeemed_at", "giftcard_last4")
CUSTOMER_COLUMNS = ["customer_id", "email_norm", "created", *METADATA_KEYS]

# Plan vocabulary. Actions write; reasons explain rows left out.
UPDATE, CREATE, NONE, SKIP = "update", "create", "none", "skip"
UNMATCHED, ANONYMOUS, MULTI_CURRENCY, AMBIGUOUS_EMAIL = "unmatched", "anonymous", "multi_currency", "ambiguous_email"

PLAN_COLUMNS = [
    "customer_id", "email", "action", "reason", "note", "redemptions_in_day", *METADATA_KEYS,
    "changed_keys", "before", "name", "phone",
]


def customers_frame(rows: list[dict]) -> pd.DataFrame:
    """Stripe customers as reconcile wants them, from dicts with id, email, created and metadata."""
    data = {
        "customer_id": [r["id"] for r in rows],
        "email_norm": [(r.get("email") or "").strip().lower() or None for r in rows],
        "created": [int(r.get("created") or 0) for r in rows],
    }
    for key in METADATA_KEYS:
        # Stripe deletes a key set to ""; some fakes keep it. Either way it means "absent".
        data[key] = [(r.get("metadata") or {}).get(key) or None for r in rows]
    return pd.DataFrame(data, columns=CUSTOMER_COLUMNS).astype({"created": "int64"})


def match_redemptions(redemptions: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """Add `customer_id`, `matched_by` and `ambiguous_email` to each redemption.

    Contract: the linked `stripe_customer_id` where that customer exists; else the trimmed, case-folded
    e-mail; where several customers share it, the most recently created one (flagged as ambiguous).
    """
    out = redemptions.copy()
    known = pd.Index(customers["customer_id"])
    linked = out["stripe_customer_id"].where(out["stripe_customer_id"].isin(known))

    by_email = customers.dropna(subset=["email_norm"]).sort_values(
        ["created", "customer_id"], ascending=False, kind="stable")
    sharing = by_email["email_norm"].value_counts()
    newest = by_email.drop_duplicates("email_norm")
    via_email = out["email_norm"].map(pd.Series(newest["customer_id"].to_numpy(), index=newest["email_norm"]))

    use_link = linked.notna()
    out["customer_id"] = linked.where(use_link, via_email).astype("object")
    out["matched_by"] = np.where(use_link, "stripe_customer_id",
                                 np.where(out["customer_id"].notna(), "email", None))
    out["ambiguous_email"] = ~use_link & (out["email_norm"].map(sharing).fillna(0).to_numpy() > 1)
    return out


def _format_times(times: pd.Series) -> pd.Series:
    text = times.dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = times.dt.microsecond != 0
    if frac.any():
        text = text.where(~frac, times.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str.rstrip("0"))
    return text + "Z"


def wanted_metadata(redemptions: pd.DataFrame, key: str) -> pd.DataFrame:
    """The contract's metadata values per `key` group, from all of the group's redemptions.

    Index: the group key. Columns: METADATA_KEYS (None = remove) and `currencies` (how many distinct).
    """
    groups = pd.Index(redemptions[key].unique(), name=key)
    done = redemptions[redemptions["status"] == "completed"]
    by = done.groupby(key, sort=False)
    latest = done.sort_values([key, "redeemed_at", "redemption_id"], kind="stable").drop_duplicates(key, keep="last")
    latest = latest.set_index(key)

    out = pd.DataFrame(index=groups)
    out["giftcard_redeemed_total"] = by["amount"].sum().reindex(groups).fillna(0).astype("int64").astype(str)
    out["giftcard_redemptions"] = by.size().reindex(groups).fillna(0).astype("int64").astype(str)
    out["currencies"] = by["currency"].nunique().reindex(groups).fillna(0).astype("int64")
    out["currency_list"] = ""
    multi = out.index[out["currencies"] > 1]
    if len(multi):
        mixed = done[done[key].isin(multi)].groupby(key)["currency"].agg(lambda c: ",".join(sorted(set(c))))
        out.loc[multi, "currency_list"] = mixed.reindex(multi).to_numpy()
    out["giftcard_currency"] = by["currency"].first().reindex(groups)
    out["giftcard_last_redeemed_at"] = _format_times(latest["redeemed_at"]).reindex(groups)
    out["giftcard_last4"] = latest["card_last4"].reindex(groups)
    for col in REMOVABLE_KEYS:
        out[col] = out[col].astype("object").where(out[col].notna(), None)
    return out


def _diff(wanted: pd.DataFrame, current: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the keys whose wanted value differs, and the current values of those keys.

    The current values go into the write's idempotency key, so a later write of the same values
    from another starting point is not mistaken for a replay.
    """
    names = np.full(len(wanted), "", dtype=object)
    before = np.full(len(wanted), "", dtype=object)
    for key in METADATA_KEYS:
        w = wanted[key].to_numpy(dtype=object)
        c = current[key].to_numpy(dtype=object)
        differs = ~((pd.isna(w) & pd.isna(c)) | (w == c))
        names = np.where(differs, names + key + " ", names)
        shown = pd.Series(c).fillna("").astype(str).to_numpy(dtype=object)
        before = np.where(differs, before + key + "=" + shown + ";", before)
    return np.char.strip(names.astype(str)).astype(object), before


def plan_customer_updates(
    redemptions: pd.DataFrame,
    customers: pd.DataFrame,
    day_start: datetime,
    day_end: datetime,
    mode: str = "update",
) -> pd.DataFrame:
    """One row per customer touched by a redemption in [day_start, day_end), with what to do.

    `redemptions` is everything giftflow has seen (all days): a customer's values come from all of them.
    """
    if mode not in ("update", "upsert"):
        raise ValueError(f"mode must be 'update' or 'upsert', not {mode!r}")
    matched = match_redemptions(redemptions, customers)
    in_day = ((matched["redeemed_at"] >= pd.Timestamp(day_start)) & (matched["redeemed_at"] < pd.Timestamp(day_end)))
    day = matched[in_day]
    parts = [_plan_matched(matched, day, customers), _plan_unmatched(matched, day, mode)]
    plan = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    if plan is None:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    order = {CREATE: 0, UPDATE: 1, NONE: 2, SKIP: 3}
    plan = plan.sort_values(["action", "customer_id", "email"], key=lambda s: s.map(order) if s.name == "action" else s,
                            kind="stable", na_position="last")
    return plan[PLAN_COLUMNS].reset_index(drop=True)


def _plan_matched(matched: pd.DataFrame, day: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    touched = day["customer_id"].dropna().unique()
    if len(touched) == 0:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    mine = matched[matched["customer_id"].isin(touched)]
    wanted = wanted_metadata(mine, "customer_id")
    current = customers.drop_duplicates("customer_id").set_index("customer_id").reindex(wanted.index)

    plan = wanted.reset_index()
    plan["email"] = current["email_norm"].to_numpy()
    plan["redemptions_in_day"] = day["customer_id"].value_counts().reindex(wanted.index).to_numpy()
    ambiguous = mine.groupby("customer_id")["ambiguous_email"].any().reindex(wanted.index)
    plan["note"] = np.where(ambiguous.to_numpy(), AMBIGUOUS_EMAIL, "")
    plan["changed_keys"], plan["before"] = _diff(wanted, current)
    multi = plan["currencies"].to_numpy() > 1
    plan["action"] = np.where(multi, SKIP, np.where(plan["changed_keys"] != "", UPDATE, NONE))
    plan["reason"] = np.where(multi, MULTI_CURRENCY, "")
    _blank_multi_currency(plan, multi)
    plan["name"] = None
    plan["phone"] = None
    return plan


def _blank_multi_currency(plan: pd.DataFrame, multi: np.ndarray) -> None:
    # Sums across currencies are not money: show which currencies instead, write nothing.
    plan.loc[multi, "note"] = plan.loc[multi, "currency_list"]
    plan.loc[multi, list(METADATA_KEYS)] = None
    plan.loc[multi, ["changed_keys", "before"]] = ""


def _plan_unmatched(matched: pd.DataFrame, day: pd.DataFrame, mode: str) -> pd.DataFrame:
    lost = day[day["customer_id"].isna()]
    if len(lost) == 0:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    anonymous = lost[lost["email_norm"].isna()]
    rows = [pd.DataFrame({
        "customer_id": None, "email": None, "action": SKIP, "reason": ANONYMOUS, "note": anonymous["redemption_id"].to_numpy(),
        "redemptions_in_day": 1, "changed_keys": "", "before": "", "name": None, "phone": None,
        **{k: None for k in METADATA_KEYS},
    })] if len(anonymous) else []

    emails = lost["email_norm"].dropna().unique()
    if len(emails):
        mine = matched[matched["customer_id"].isna() & matched["email_norm"].isin(emails)]
        wanted = wanted_metadata(mine, "email_norm")
        plan = wanted.reset_index().rename(columns={"email_norm": "email"})
        plan["customer_id"] = None
        plan["redemptions_in_day"] = lost["email_norm"].value_counts().reindex(wanted.index).to_numpy()
        # Name and phone from the earliest redemption that has them: stable as new days arrive.
        first = mine.sort_values(["redeemed_at", "redemption_id"], kind="stable")
        for col in ("name", "phone"):
            plan[col] = first.dropna(subset=[col]).drop_duplicates("email_norm").set_index("email_norm")[col] \
                .reindex(wanted.index).to_numpy()
        creatable = (mode == "upsert") & (plan["currencies"].to_numpy() == 1)
        multi = plan["currencies"].to_numpy() > 1
        plan["action"] = np.where(creatable, CREATE, SKIP)
        plan["reason"] = np.where(creatable, "", np.where(multi & (mode == "upsert"), MULTI_CURRENCY, UNMATCHED))
        plan["note"] = ""
        _blank_multi_currency(plan, multi)
        plan["changed_keys"] = np.where(creatable, " ".join(METADATA_KEYS), "")
        plan["before"] = ""
        rows.append(plan)
    return pd.concat(rows, ignore_index=True)[PLAN_COLUMNS]


def metadata_changes(row: dict) -> dict[str, str]:
    """The Stripe `metadata` parameter for one plan row: changed keys only, "" deletes a key."""
    return {k: (row[k] if row[k] is not None and not pd.isna(row[k]) else "") for k in row["changed_keys"].split()}


def summarize(plan: pd.DataFrame) -> dict[str, int]:
    """Counts per action and per left-out reason, for logs and UI metadata."""
    counts = {f"action_{a}": int(n) for a, n in plan["action"].value_counts().items()}
    counts.update({f"left_out_{r}": int(n) for r, n in plan.loc[plan["action"] == SKIP, "reason"].value_counts().items()})
    counts["ambiguous_email"] = int((plan["note"] == AMBIGUOUS_EMAIL).sum())
    return counts
