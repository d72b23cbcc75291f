"""Gift-card sync reconciliation: redemptions x Stripe customers -> what Stripe should hold, per customer.

Pure pandas, no I/O: the rules of giftflow-contract.md ("The gift-card sync") live here and only here. This
module decides the wanted values (or why a customer is left out); the diff against what Stripe holds, and so
the action, is the sync engine's (giftflow/services/giftcard_sync.py runs it), the one path that writes
customers.
Sized for ~1M redemptions x 1M customers (bench/reconcile.py): the work runs on integer codes and
positions, and strings are only hashed, compared or made where they must be.
"""

from __future__ import annotations

import itertools
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
CUSTOMER_COLUMNS = ["customer_id", "email_norm", "created", *METADATA_KEYS]

# Plan vocabulary: the engine's actions, and skip for rows left out (the reason says why).
SKIP = "skip"
SYNC = "sync"  # not decided here: the engine diffs it
UNMATCHED, ANONYMOUS, MULTI_CURRENCY, AMBIGUOUS_EMAIL = "unmatched", "anonymous", "multi_currency", "ambiguous_email"

PLAN_COLUMNS = [
    "customer_id",
    "email",
    "action",
    "reason",
    "note",
    "redemptions_in_day",
    *METADATA_KEYS,
    "changed_keys",
    "name",
    "phone",
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
    keys = _CustomerKeys.of(customers)
    row, use_link, ambiguous = _match(redemptions, keys)
    customer_id = _take(keys.ids, row, np.nan)
    out["customer_id"] = pd.Series(customer_id, index=out.index, dtype="object")
    out["matched_by"] = np.where(use_link, "stripe_customer_id", np.where(row >= 0, "email", np.array(None, dtype=object)))
    out["ambiguous_email"] = ambiguous
    return out


class _CustomerKeys:
    """The customers' ids, e-mails and creation times as numpy arrays, each made once: Arrow-stored strings
    (pandas with pyarrow installed) become Python objects here and nowhere else."""

    def __init__(self, ids: np.ndarray, emails: np.ndarray, created: np.ndarray):
        self.ids, self.emails, self.created = ids, emails, created

    @classmethod
    def of(cls, customers: pd.DataFrame) -> _CustomerKeys:
        return cls(
            customers["customer_id"].to_numpy(dtype=object),
            customers["email_norm"].to_numpy(dtype=object),
            customers["created"].to_numpy(dtype=np.int64),
        )


def _match(redemptions: pd.DataFrame, customers: _CustomerKeys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """match_redemptions as arrays: each redemption's customer as the position in `customers` of the
    first row with that id (-1: none), whether the link decided it, and whether the e-mail was ambiguous."""
    cust_id, link, ids = _codes(customers.ids, *_present(redemptions["stripe_customer_id"]))
    use_link = link >= 0  # the e-mail of the others decides
    cust_mail, mail, mails = _codes(customers.emails, *_present(redemptions["email_norm"], ~use_link))
    first_row = np.full(ids, len(cust_id))
    np.minimum.at(first_row, cust_id[cust_id >= 0], np.flatnonzero(cust_id >= 0))
    has_mail = np.flatnonzero(cust_mail >= 0)
    newest = has_mail[_pick(cust_mail[has_mail], mails, customers.created[has_mail], customers.ids, has_mail)]
    sharing = np.bincount(cust_mail[has_mail], minlength=mails)

    newest_row = _take(first_row, cust_id[newest], -1)
    row = np.where(use_link, _take(first_row, link, -1), _take(newest_row, mail, -1))
    ambiguous = ~use_link & _take(sharing > 1, mail, False)
    return row, use_link, ambiguous


def _present(values: pd.Series, among: np.ndarray | bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """The values (of the rows `among`) that are not missing as Python objects, their positions, and how many
    values there are: the others are neither converted nor hashed (most redemptions link no customer)."""
    pos = np.flatnonzero(values.notna().to_numpy() & among)
    return values.array.take(pos).to_numpy(dtype=object), pos, len(values)


def _codes(theirs: np.ndarray, ours: np.ndarray, at: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes 0..k-1 for the distinct values of `theirs` (-1: missing), the code of each of n values of which
    `ours` are the ones at positions `at` (-1: missing, or a value `theirs` lacks), and k.

    The values are told apart by Python's hash of each (a machine integer, hashed and compared far faster than
    strings); that the values sharing a code are equal is then checked, and where two differ (a hash
    collision: never seen) the values themselves are hashed."""
    known = np.flatnonzero(pd.notna(theirs))
    mine = theirs[known]
    hashes = np.fromiter(map(hash, itertools.chain(mine, ours)), dtype=np.int64, count=len(mine) + len(ours))
    codes, _ = pd.factorize(hashes)
    head, tail = codes[: len(mine)], codes[len(mine) :]
    k = int(head.max(initial=-1)) + 1
    tail = np.where(tail < k, tail, -1)
    # Codes are numbered in order of first appearance: the first value of each stands for the code.
    first = np.ones(len(head), dtype=bool)
    first[1:] = head[1:] > np.maximum.accumulate(head)[:-1]
    value = mine[first]
    # Each value against the first of its code (ours: the values that found one; the others against None).
    if not ((mine == value[head]).all() and ((ours == _take(value, tail, None)) | (tail < 0)).all()):
        codes, _ = pd.factorize(np.concatenate([mine, ours]))
        head, tail = codes[: len(mine)], codes[len(mine) :]
        k = int(head.max(initial=-1)) + 1
        tail = np.where(tail < k, tail, -1)
    out_theirs = np.full(len(theirs), -1)
    out_theirs[known] = head
    found = np.full(n, -1)
    found[at] = tail
    return out_theirs, found, k


def _as_is(values: np.ndarray) -> pd.Series:
    """An object column as given: pandas would otherwise scan it to infer a string dtype (with pyarrow
    installed, Arrow strings, which cost a conversion each way)."""
    return pd.Series(values, dtype=object, copy=False)


def _objects(values: np.ndarray) -> pd.Series:
    """An object column from an object array, missing values as NaN (as a string column holds them): pandas
    would otherwise scan it to infer a string dtype."""
    missing = pd.isna(values)
    if missing.any():
        values = values.copy()
        values[missing] = np.nan
    return pd.Series(values, dtype=object, copy=False)


def _take(values: np.ndarray, pos: np.ndarray, missing) -> np.ndarray:
    """values[pos], with `missing` where pos is -1."""
    return np.append(values, np.array([missing], dtype=values.dtype))[pos]


def _where(cond: np.ndarray, yes, no) -> np.ndarray:
    """np.where for strings, sharing `yes` and `no`: numpy would make a fixed-width str array, which
    pandas turns into a new str object per row."""
    return np.where(cond, np.array(yes, dtype=object), np.array(no, dtype=object))


def _string_order(values: np.ndarray) -> np.ndarray:
    """Positions sorting distinct strings: Python's sort, which is the order pandas gives them and faster."""
    return np.array(sorted(range(len(values)), key=values.__getitem__), dtype=np.intp)


def _int64(values: pd.Series) -> np.ndarray:
    """Times (or integers) as int64, in the order they sort; NaT is the smallest."""
    return values.array.asi8 if values.dtype.kind == "M" else values.to_numpy(dtype=np.int64)


def _pick(
    group: np.ndarray, groups: int, first: np.ndarray, then: pd.Series | np.ndarray, at: np.ndarray, last: bool = True
) -> np.ndarray:
    """Per group 0..groups-1, the position in `group` of the row that a stable sort by (`first`, `then`) puts
    last (or first) in its group; -1 where a group has no row. `first` is int64 and per row of `group`;
    `then[at[i]]` is row i's second key: it is read only for rows tied on the first.

    Cheap because the first key (a time) rarely ties within a group: only the ties get the full sort.
    """
    nat = np.iinfo(np.int64).min  # NaT: never picked, as a sort would put it after every time
    best = np.full(groups, nat if last else np.iinfo(np.int64).max, dtype=np.int64)
    (np.maximum if last else np.minimum).at(best, group, first)
    candidates = np.flatnonzero((first == best[group]) & (first != nat))
    mine = group[candidates]
    tied = np.bincount(mine, minlength=groups)[mine] > 1
    pos = np.full(groups, -1)
    pos[mine[~tied]] = candidates[~tied]
    if tied.any():
        rows = candidates[tied]
        keys = then.iloc[at[rows]] if isinstance(then, pd.Series) else then[at[rows]]
        ties = pd.DataFrame({"_group": mine[tied], "_key": np.asarray(keys, dtype=object), "_pos": rows})
        ties = ties.sort_values(["_group", "_key"], kind="stable")
        ties = ties.drop_duplicates("_group", keep="last" if last else "first")
        pos[ties["_group"].to_numpy()] = ties["_pos"].to_numpy()
    return pos


def _format_times(times: pd.Series) -> np.ndarray:
    """RFC 3339 UTC with Z, to the second, or with the microseconds that are not 0 (no trailing zeros)."""
    naive = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    text = np.char.add(np.datetime_as_string(naive, unit="s"), "Z").astype(object)
    frac = np.flatnonzero((times.dt.microsecond != 0).to_numpy())
    if len(frac):
        some = times.iloc[frac]
        text[frac] = (some.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str.rstrip("0") + "Z").to_numpy(dtype=object)
    return text


def _text(values: np.ndarray | pd.Series) -> np.ndarray:
    """`values` as strings (Python objects), each distinct value formatted once (few distinct counts, totals
    and times), so rows with the same value share one string."""
    codes, distinct = pd.factorize(values)
    distinct = pd.Series(distinct)
    text = _format_times(distinct) if distinct.dtype.kind == "M" else distinct.astype(str).to_numpy(dtype=object)
    return text[codes]


def _wanted(redemptions: pd.DataFrame, group: np.ndarray, groups: int) -> pd.DataFrame:
    """The contract's metadata values per group, from all of the group's redemptions; groups are numbers
    0..groups-1 (-1: none), which are also the index. Columns: METADATA_KEYS (None = remove), `currencies`
    (how many distinct) and `currency_list`."""
    done = np.flatnonzero((redemptions["status"] == "completed").to_numpy() & (group >= 0))
    group = group[done]
    total = np.zeros(groups, dtype="int64")
    np.add.at(total, group, redemptions["amount"].to_numpy(dtype="int64")[done])
    currency, currencies = pd.factorize(redemptions["currency"].array.take(done))
    priced = currency >= 0
    distinct = pd.unique(group[priced] * len(currencies) + currency[priced])  # one per (group, currency)
    first_priced = np.full(groups, len(done))
    np.minimum.at(first_priced, group[priced], np.flatnonzero(priced))
    redeemed_at = redemptions["redeemed_at"].iloc[done]
    latest = _pick(group, groups, _int64(redeemed_at), redemptions["redemption_id"], done)
    stamps = np.full(groups, None, dtype=object)
    stamps[latest >= 0] = _text(redeemed_at.iloc[latest[latest >= 0]])

    out = pd.DataFrame(index=pd.RangeIndex(groups))
    out["giftcard_redeemed_total"] = pd.Series(_text(total), dtype=object)
    out["giftcard_redemptions"] = pd.Series(_text(np.bincount(group, minlength=groups)), dtype=object)
    out["currencies"] = np.bincount(distinct // max(len(currencies), 1), minlength=groups).astype("int64")
    out["currency_list"] = pd.Series("", index=out.index, dtype=object)
    multi = np.flatnonzero(out["currencies"].to_numpy() > 1)
    if len(multi):
        mixed = np.isin(group, multi) & priced
        names = np.asarray(currencies, dtype=object)[currency[mixed]]
        lists = pd.Series(names).groupby(group[mixed]).agg(lambda c: ",".join(sorted(set(c))))
        out.loc[multi, "currency_list"] = lists.reindex(multi).to_numpy()
    currency_names = np.append(np.asarray(currencies, dtype=object), np.array([None], dtype=object))
    # As codes: rows with the same last 4 share one string (600k distinct strings cost the diff a pass each).
    last4, last4s = pd.factorize(redemptions["card_last4"])
    last4 = last4[done]
    last4s = np.append(np.asarray(last4s, dtype=object), np.array([None], dtype=object))
    removable = {
        "giftcard_currency": currency_names[_take(currency, np.where(first_priced < len(done), first_priced, -1), -1)],
        "giftcard_last_redeemed_at": stamps,
        "giftcard_last4": last4s[_take(last4, latest, -1)],
    }
    for col, values in removable.items():
        out[col] = pd.Series(values, dtype="object")
    return out


def _day_groups(codes: np.ndarray, in_day: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the codes (-1: none) that occur in the day 0..n-1 in the order of their names, which is
    the plan's order. Returns each row's number (-1: none) and the numbered codes in number order."""
    touched = np.flatnonzero(np.bincount(codes[in_day & (codes >= 0)], minlength=len(names)))
    touched = touched[_string_order(names[touched])]
    number = np.full(len(names), -1)
    number[touched] = np.arange(len(touched))
    return _take(number, codes, -1), touched


def _plan_matched(
    redemptions: pd.DataFrame, row: np.ndarray, in_day: np.ndarray, ambiguous: np.ndarray, customers: _CustomerKeys
) -> pd.DataFrame:
    group, touched = _day_groups(row, in_day, customers.ids)
    if len(touched) == 0:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    mine = group >= 0
    plan = _wanted(redemptions, group, len(touched))

    plan["_row"] = touched  # the customer's position in `customers`
    plan["customer_id"] = _objects(customers.ids[touched])
    plan["email"] = _objects(customers.emails[touched])
    plan["redemptions_in_day"] = np.bincount(group[in_day & mine], minlength=len(touched))
    plan["note"] = _where(np.bincount(group[ambiguous & mine], minlength=len(touched)) > 0, AMBIGUOUS_EMAIL, "")
    multi = plan["currencies"].to_numpy() > 1
    plan["action"] = _as_is(_where(multi, SKIP, SYNC))
    plan["reason"] = _as_is(_where(multi, MULTI_CURRENCY, ""))
    _blank_multi_currency(plan, multi)
    plan["name"] = None
    plan["phone"] = None
    return plan


def _blank_multi_currency(plan: pd.DataFrame, multi: np.ndarray) -> None:
    # Sums across currencies are not money: show which currencies instead, write nothing.
    plan.loc[multi, "note"] = plan.loc[multi, "currency_list"]
    plan.loc[multi, list(METADATA_KEYS)] = None
    plan.loc[multi, ["giftcard_redeemed_total", "giftcard_redemptions"]] = np.nan  # as a string column holds it


def _plan_unmatched(unmatched: pd.DataFrame, in_day: np.ndarray, mode: str) -> pd.DataFrame:
    lost = unmatched[in_day]
    if len(lost) == 0:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    rows = []
    mail, emails = pd.factorize(unmatched["email_norm"])
    group, touched = _day_groups(mail, in_day, np.asarray(emails, dtype=object))
    if len(touched):
        plan = _wanted(unmatched, group, len(touched))
        plan["email"] = np.asarray(emails, dtype=object)[touched]
        plan["customer_id"] = None
        plan["redemptions_in_day"] = np.bincount(group[in_day & (group >= 0)], minlength=len(touched))
        # Name and phone from the earliest redemption that has them: stable as new days arrive.
        for col in ("name", "phone"):
            has = np.flatnonzero(unmatched[col].notna().to_numpy() & (group >= 0))
            first = _pick(
                group[has],
                len(touched),
                _int64(unmatched["redeemed_at"].iloc[has]),
                unmatched["redemption_id"],
                has,
                last=False,
            )
            plan[col] = _take(unmatched[col].to_numpy(dtype=object)[has], first, np.nan)
        creatable = (mode == "upsert") & (plan["currencies"].to_numpy() == 1)
        multi = plan["currencies"].to_numpy() > 1
        plan["action"] = _as_is(_where(creatable, SYNC, SKIP))
        plan["reason"] = _as_is(_where(creatable, "", _where(multi & (mode == "upsert"), MULTI_CURRENCY, UNMATCHED)))
        plan["note"] = ""
        _blank_multi_currency(plan, multi)
        rows.append(plan)

    anonymous = lost[lost["email_norm"].isna()]
    if len(anonymous):
        rows.append(
            pd.DataFrame(
                {
                    "customer_id": None,
                    "email": None,
                    "action": SKIP,
                    "reason": ANONYMOUS,
                    "note": anonymous["redemption_id"].to_numpy(),
                    "redemptions_in_day": 1,
                    "name": None,
                    "phone": None,
                    **{k: None for k in METADATA_KEYS},
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def summarize(plan: pd.DataFrame) -> dict[str, int]:
    """Counts per action and per left-out reason, for logs and UI metadata."""
    counts = {f"action_{a}": int(n) for a, n in plan["action"].value_counts().items()}
    counts.update({f"left_out_{r}": int(n) for r, n in plan.loc[plan["action"] == SKIP, "reason"].value_counts().items()})
    counts["ambiguous_email"] = int((plan["note"] == AMBIGUOUS_EMAIL).sum())
    return counts


def wanted_by_customer(
    redemptions: pd.DataFrame, customers: pd.DataFrame, day_start: datetime, day_end: datetime, mode: str
) -> pd.DataFrame:
    """One row per customer touched by a redemption in [day_start, day_end): the metadata Stripe should hold,
    from all of the customer's redemptions in `redemptions` (every day giftflow has seen), with action `sync`
    (the engine diffs it) or `skip` and the reason (unmatched, anonymous, multi_currency). `_row` is a matched
    customer's position in `customers`; in `upsert` mode an unmatched e-mail is a row to create."""
    keys = _CustomerKeys.of(customers)
    row, _, ambiguous = _match(redemptions, keys)
    in_day = (
        (redemptions["redeemed_at"] >= pd.Timestamp(day_start)) & (redemptions["redeemed_at"] < pd.Timestamp(day_end))
    ).to_numpy()
    used = redemptions[
        ["redemption_id", "status", "amount", "currency", "card_last4", "email_norm", "name", "phone", "redeemed_at"]
    ]
    parts = [_plan_matched(used, row, in_day, ambiguous, keys), _plan_unmatched(used[row < 0], in_day[row < 0], mode)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PLAN_COLUMNS)
