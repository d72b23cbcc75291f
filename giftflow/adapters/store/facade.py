"""GiftflowStore: the one object callers hold, a thin facade over the repositories of one database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from giftflow.adapters.store.customers import CustomerMirror, MirroredCustomers, mirror_in
from giftflow.adapters.store.db import default_database_url, engine_for
from giftflow.adapters.store.ledger import Ledger, PlannedWrite, WriteOutcome, plan_in, settle_in
from giftflow.adapters.store.quarantine import Quarantine
from giftflow.adapters.store.redemptions import Redemptions
from giftflow.adapters.store.state import State
from giftflow.adapters.store.stripe_objects import StripeObjects
from giftflow.adapters.store.sync_runs import SyncIds, SyncRuns
from giftflow.adapters.store.webhooks import WebhookEvents


@dataclass(frozen=True)
class Repositories:
    redemptions: Redemptions
    customers: CustomerMirror
    stripe_objects: StripeObjects
    ledger: Ledger
    quarantine: Quarantine
    webhook_events: WebhookEvents
    sync_runs: SyncRuns
    sync_ids: SyncIds
    state: State


@lru_cache(maxsize=8)
def _repositories(url: str) -> Repositories:
    engine = engine_for(url)
    return Repositories(
        Redemptions(engine),
        CustomerMirror(engine),
        StripeObjects(engine),
        Ledger(engine),
        Quarantine(engine),
        WebhookEvents(engine),
        SyncRuns(engine),
        SyncIds(engine),
        State(engine),
    )


class GiftflowStore(BaseModel):
    """giftflow's own database: what was seen, what was sent, what was refused. Opening it (first use per process)
    migrates the database to the current schema. `repos` are the tables by group; the methods below are the
    names every caller uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under $DAGSTER_HOME")

    @property
    def url(self) -> str:
        return self.database_url or default_database_url()

    @property
    def engine(self) -> sa.Engine:
        return engine_for(self.url)

    @property
    def repos(self) -> Repositories:
        return _repositories(self.url)

    # -- redemptions -------------------------------------------------------------------------------------
    def upsert_redemptions(self, frame: pd.DataFrame) -> int:
        return self.repos.redemptions.upsert(frame)

    def load_redemptions(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        emails: Iterable[str] = (),
        customer_ids: Iterable[str] = (),
    ) -> pd.DataFrame:
        """Redemptions redeemed in [start, end), or (with emails/customer_ids) those linked to them."""
        return self.repos.redemptions.load(start=start, end=end, emails=emails, customer_ids=customer_ids)

    def redemption_versions(self, ids: list[str]) -> dict[str, datetime]:
        """`updated_at` of each stored redemption among `ids`: tells a new change from one already seen."""
        return self.repos.redemptions.versions(ids)

    # -- Stripe objects (workflows) -------------------------------------------------------------------------
    def upsert_objects(self, kind: str, rows: list[dict]) -> None:
        self.repos.stripe_objects.upsert(kind, rows)

    def load_objects(
        self,
        kind: str,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        ids: Iterable[str] | None = None,
        customer_ids: Iterable[str] | None = None,
    ) -> list[dict]:
        return self.repos.stripe_objects.load(
            kind, created_gte=created_gte, created_lt=created_lt, ids=ids, customer_ids=customer_ids
        )

    # -- ledger ---------------------------------------------------------------------------------------------
    def ledger_entries(self, op_keys: Iterable[str]) -> dict[str, dict]:
        return self.repos.ledger.entries(op_keys)

    def ledger_for_target(self, target: str, kind: str) -> list[dict]:
        return self.repos.ledger.for_target(target, kind)

    def record_planned(
        self, op_key: str, kind: str, target: str, params: dict, partition: str | None, run_id: str | None
    ) -> None:
        self.repos.ledger.record_planned(op_key, kind, target, params, partition, run_id)

    def record_result(
        self,
        op_key: str,
        *,
        status: str,
        request_id: str | None = None,
        object_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self.repos.ledger.record_result(op_key, status=status, request_id=request_id, object_id=object_id, error=error)

    def record_writes(self, records: Iterable[PlannedWrite | WriteOutcome | MirroredCustomers]) -> None:
        """Several writes' ledger entries and mirrored answers in one transaction, as `record_planned`,
        `record_result` and `upsert_customers` would store them one by one (the customer writer's group commit:
        one commit for what all its threads have waiting). Their op_keys must be distinct."""
        records = list(records)
        with self.engine.begin() as conn:
            plan_in(conn, [r for r in records if isinstance(r, PlannedWrite)])
            settle_in(conn, [r for r in records if isinstance(r, WriteOutcome)])
            mirror_in(conn, [r for r in records if isinstance(r, MirroredCustomers)])

    def ledger_frame(self) -> pd.DataFrame:
        return self.repos.ledger.frame()

    # -- quarantine -----------------------------------------------------------------------------------------
    def quarantine(self, source: str, bad: list[dict], partition: str | None, run_id: str | None) -> None:
        self.repos.quarantine.add(source, bad, partition, run_id)

    def quarantined(self, source: str = "cardivo") -> pd.DataFrame:
        return self.repos.quarantine.frame(source)

    # -- webhook deliveries ---------------------------------------------------------------------------------
    def record_webhook_event(self, source: str, event_id: str, event_type: str, payload: dict) -> bool:
        """Store a delivery durably; False where this event id was already received (a replay)."""
        return self.repos.webhook_events.record(source, event_id, event_type, payload)

    def prune_webhook_events(self, received_before: datetime) -> int:
        """Delete deliveries received before `received_before`; how many went."""
        return self.repos.webhook_events.prune(received_before)

    def webhook_events_since(self, source: str, received_after: datetime, limit: int = 1000) -> list[dict]:
        """Deliveries received at or after `received_after`, oldest first, `payload` decoded; read-only."""
        return self.repos.webhook_events.since(source, received_after, limit)

    # -- the Stripe customer mirror -------------------------------------------------------------------------
    def replace_customers(
        self,
        rows: list[dict],
        *,
        listed_from: datetime | None = None,
        refreshed_keys: Iterable[str] = ("customers_refreshed_at",),
    ) -> None:
        """Make the mirror this full listing of Stripe customers, begun at `listed_from`: customers not in it
        and not mirrored since are dropped; `_tax_ids` / `_coupons` a row does not carry are kept."""
        self.repos.customers.replace(rows, listed_from=listed_from, refreshed_keys=refreshed_keys)

    def upsert_customers(
        self,
        rows: list[dict],
        *,
        as_of: datetime | None = None,
        add_tax_ids: Iterable[str] = (),
        add_coupons: Iterable[str] = (),
    ) -> None:
        """Mirror customers as Stripe showed them at `as_of` (default now), adding the given tax ids and coupons."""
        self.repos.customers.upsert(rows, as_of=as_of, add_tax_ids=add_tax_ids, add_coupons=add_coupons)

    def delete_customers(self, ids: list[str]) -> None:
        self.repos.customers.delete(ids)

    def load_customers(self, ids: Iterable[str] | None = None, *, emails: Iterable[str] | None = None) -> list[dict]:
        """The mirror as Stripe's customer objects: all of it, or those among `ids` or with an e-mail in `emails`."""
        return self.repos.customers.load(ids, emails=emails)

    def count_customers(self) -> int:
        return self.repos.customers.count()

    def customers_refreshed_at(self, key: str = "customers_refreshed_at") -> datetime | None:
        value = self.get_state(key)
        return datetime.fromisoformat(value) if value else None

    # -- sync runs and created ids --------------------------------------------------------------------------
    def record_sync_run(
        self,
        sync: str,
        run_id: str,
        *,
        partition: str | None,
        status: str,
        dry_run: bool,
        counts: dict,
        rejections: list[dict],
        started_at: datetime,
    ) -> None:
        self.repos.sync_runs.record(
            sync,
            run_id,
            partition=partition,
            status=status,
            dry_run=dry_run,
            counts=counts,
            rejections=rejections,
            started_at=started_at,
        )

    def sync_runs(self, sync: str, run_id: str | None = None, limit: int = 20) -> list[dict]:
        """Reports of a sync's runs, newest first (or the one run), counts and rejections decoded."""
        return self.repos.sync_runs.reports(sync, run_id, limit)

    def record_sync_ids(self, sync: str, created: dict[str, str], run_id: str | None) -> None:
        """Source row key -> the Stripe customer id a sync created for it."""
        self.repos.sync_ids.record(sync, created, run_id)

    def sync_ids(self, sync: str) -> dict[str, str]:
        return self.repos.sync_ids.get(sync)

    def delete_sync_ids(self, sync: str) -> None:
        self.repos.sync_ids.delete(sync)

    # -- small state (cursors) ------------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        return self.repos.state.get(key)

    def set_state(self, key: str, value: str) -> None:
        self.repos.state.set(key, value)
