"""The words sync plans, the customer writer and their reports use, one name per idea.

Every member is a `str` equal to the word stored and reported today (`Action.CREATE == "create"`), so plans,
ledger rows, stored reports and Dagster metadata keep their values. Plans store the plain strings (`.value`),
so a pickled plan does not depend on this module.

Three related ideas, three names:
  - `Action.REJECT`: the plan refuses a row (invalid, or no customer it may write); counted as `Outcome.REJECTED`
    together with the rows Stripe refuses (4xx). It is something to fix in the source.
  - `Action.SKIP`: the gift-card reconcile leaves a row out by design (`LeftOutReason`); counted as
    `Outcome.LEFT_OUT`. Nothing to fix.
  - `LedgerStatus.REFUSED`: the ledger's record of one request Stripe refused (4xx), remembered so it is not resent.
"""

from __future__ import annotations

import enum
import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10 (requires-python), same behaviour

    class StrEnum(str, enum.Enum):
        """str(member) and f"{member}" give the value, as enum.StrEnum does."""

        __str__ = str.__str__
        __format__ = str.__format__


class Action(StrEnum):
    """What a plan row asks of Stripe."""

    CREATE = "create"  # no customer matches: create one (upsert mode), exactly once
    UPDATE = "update"  # a customer matches and differs in at least one diffed field: write the changed fields
    NONE = "none"  # a customer matches and already holds every wanted value: no write
    REJECT = "reject"  # the row cannot be written (invalid, or no customer it may write); `reason` says why
    SKIP = "skip"  # gift-card sync only: reconcile leaves the row out by design; `reason` is a LeftOutReason


class LeftOutReason(StrEnum):
    """Why the gift-card reconcile leaves a customer out (Action.SKIP); not an error."""

    UNMATCHED = "unmatched"  # no Stripe customer by link or e-mail, and the mode does not create one
    ANONYMOUS = "anonymous"  # redemptions with neither a customer link nor an e-mail
    MULTI_CURRENCY = "multi_currency"  # redemptions in several currencies: no single total to write


class RejectReason(StrEnum):
    """Why the plan rejects a valid row it cannot match or create (Action.REJECT). An invalid row's reason is
    instead its validation problems, each naming the field, joined with '; '."""

    NO_CUSTOMER_WITH_ID_UPDATE = "no Stripe customer with this id (mode update)"  # by id, update mode
    NO_CUSTOMER_WITH_EMAIL_UPDATE = "no Stripe customer with this e-mail (mode update)"  # by e-mail, update mode
    NO_CUSTOMER_WITH_ID = "no Stripe customer with this id"  # by id, upsert: a given id Stripe lacks is a mistake
    NO_CUSTOMER_NO_EMAIL = "no Stripe customer with this id, and no e-mail to match on or create with"  # by e-mail, upsert
    SAME_CUSTOMER = "another row of this sync already maps to the same Stripe customer"  # the first row wins
    SAME_EMAIL_CREATE = "another row of this sync creates a customer with the same e-mail"  # the first row wins


class Outcome(StrEnum):
    """What happened to plan rows, as counted in a run's report (ApplyReport.counts, `giftflow syncs report`)."""

    CREATED = "created"  # a create this run made at Stripe
    RECOVERED = "recovered"  # a create found already made (an earlier run's, whose answer was lost): not made again
    UPDATED = "updated"  # an update (or tax id / promotion code) this run sent
    ALREADY_SENT = "already_sent"  # an update the ledger shows as sent before: not resent
    UNCHANGED = "unchanged"  # Action.NONE rows
    REJECTED = "rejected"  # Action.REJECT rows, plus rows Stripe refused (4xx) now or within the refusal memory
    FAILED = "failed"  # any other failed write: the step fails after the rest went out, a retry resends it
    LEFT_OUT = "left_out"  # Action.SKIP rows (gift-card sync)
    WOULD_CREATE = "would_create"  # dry run: a create that would be sent
    WOULD_UPDATE = "would_update"  # dry run: an update that would be sent


class RejectionStage(StrEnum):
    """Where a reported rejection or failure came from (the `stage` of a report's rejected rows)."""

    VALIDATION = "validation"  # the plan rejected the row (Action.REJECT)
    STRIPE = "stripe"  # Stripe refused the request (4xx other than 401/403/429)
    STRIPE_ERROR = "stripe_error"  # the write failed otherwise (network, 5xx, 401/403, 429): retried next run


class LedgerStatus(StrEnum):
    """A write's state in giftflow's ledger (one row per idempotency key)."""

    PLANNED = "planned"  # recorded before the call: a crash after it is detectable
    SENT = "sent"  # Stripe answered 2xx: never sent again
    REFUSED = "refused"  # Stripe answered 4xx: not resent for REFUSAL_MEMORY_S
    FAILED = "failed"  # no usable answer: resent by the next run


class WriteKind(StrEnum):
    """The kinds of ledger writes the customer writer makes (the ledger's `kind`, part of the idempotency key)."""

    CREATE_CUSTOMER = "create_customer"  # a customer made exactly once per identity (e-mail or sync row)
    UPDATE_CUSTOMER = "update_customer"  # the changed fields of one customer, keyed with the values replaced
    CREATE_TAX_ID = "create_tax_id"  # a tax id added to a customer (never removed)
    CREATE_PROMOTION_CODE = "create_promotion_code"  # a coupon given to a customer as a promotion code restricted to it
    APPLY_COUPON = "apply_coupon"  # a coupon as the customer's discount (adapters/stripe.py: apply_customer_coupon)
