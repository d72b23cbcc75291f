"""Exactly once after Stripe has forgotten the idempotency keys (it prunes them after 24 hours).

A create or a refund was planned and sent, Stripe carried it out, the answer was lost, and the step is retried
days later: the same idempotency key now makes a second object, so only giftflow's lookup (a create by its
e-mail, a refund by the ledger key in its metadata) stands between the retry and a duplicate."""

from collections import Counter
from datetime import date, datetime, timezone

import dagster as dg
import pytest

from giftflow.orchestration.definitions import build_defs
from giftflow.services.workflow_actions import apply_workflow_plan
from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer

DAYS = [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)]
KEY = "sk_test_expiry"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture
def world():
    return dataset.build_world(11, DAYS)


def _env(monkeypatch, tmp_path, **values):
    for name in ("GIFTFLOW_DRY_RUN", "GIFTFLOW_SYNC_MODE", "GIFTFLOW_RULES", "GIFTFLOW_REFUNDS_ENABLED",
                 "GIFTFLOW_SMTP_HOST", "GIFTFLOW_STRIPE_RATE_DB"):
        monkeypatch.delenv(name, raising=False)
    for k, v in {"DAGSTER_HOME": str(tmp_path), "STRIPE_API_KEY": KEY,
                 "GIFTFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/giftflow.sqlite", **values}.items():
        monkeypatch.setenv(k, v)


def _no_retries(base: str) -> dict:
    """The first attempt's client: no SDK retry, so a lost answer stays lost (as when the process dies)."""
    return {**QUIET, "resources": {"stripe_api": {"config": {"max_network_retries": 0, "api_key": KEY,
                                                             "api_base": base}}}}


def test_an_unconfirmed_create_retried_after_the_keys_expired_is_found_by_email(world, tmp_path, monkeypatch):
    cardivo_state, state = cardivo.CardivoState.from_world(world), stripe.StripeState(world.customers)
    with BackgroundServer(cardivo.create_app(cardivo_state, "ck")) as c_srv, \
            BackgroundServer(stripe.create_app(state, api_key=KEY)) as s_srv:
        _env(monkeypatch, tmp_path, CARDIVO_API_BASE=c_srv.base_url, CARDIVO_API_KEY="ck",
             STRIPE_API_BASE=s_srv.base_url, GIFTFLOW_SYNC_MODE="upsert")
        instance = dg.DagsterInstance.ephemeral()
        job = build_defs().resolve_job_def("giftcard_sync")
        state.lose_next_responses(10_000)  # every write is carried out at Stripe, every answer is lost
        first = job.execute_in_process(partition_key=DAYS[0].isoformat(), instance=instance, raise_on_error=False,
                                       run_config=_no_retries(s_srv.base_url))
        assert not first.success
        ours = {c["id"] for c in world.customers}
        made = [c for c in state.customers() if c["id"] not in ours]
        assert made, "the day must need creates for this test to mean anything"
        state.lose_next_responses(0)
        assert state.expire_idempotency_keys() > 0  # "days later": Stripe has pruned every key
        creates = state.stats()["by_route"]["POST /v1/customers"]["writes"]

        again = job.execute_in_process(partition_key=DAYS[0].isoformat(), instance=instance, run_config=QUIET,
                                       op_selection=["giftcard_customer_updates"])  # the step's retry
        assert again.success
        assert state.stats()["by_route"]["POST /v1/customers"]["writes"] == creates  # not one more create
        emails = Counter(c["email"] for c in state.customers() if c["id"] not in ours)
        assert emails and max(emails.values()) == 1, emails
        md = again.asset_materializations_for_node("giftcard_customer_updates")[0].metadata
        assert md["created"].value == 0


def _day(obj: dict) -> date:
    return datetime.fromtimestamp(obj["created"], timezone.utc).date()


def test_an_unconfirmed_refund_retried_after_the_keys_expired_is_found_by_its_metadata(world, tmp_path, monkeypatch):
    state = stripe.StripeState.from_world(world)
    refundable = Counter()  # day -> warnings the refund rule acts on (the contract's table)
    for w in state.objects("radar.early_fraud_warning"):
        ch = state.retrieve("charge", w["charge"])
        rest = ch["amount"] - ch["amount_refunded"]
        if ch["currency"] == "usd" and not ch["disputed"] and not ch["refunded"] and 0 < rest < 1500:
            refundable[_day(w)] += 1
    day = max(refundable, key=refundable.get)
    with BackgroundServer(stripe.create_app(state, api_key=KEY)) as s_srv:
        _env(monkeypatch, tmp_path, STRIPE_API_BASE=s_srv.base_url, CARDIVO_API_BASE="http://unused",
             CARDIVO_API_KEY="unused", GIFTFLOW_REFUNDS_ENABLED="true", GIFTFLOW_TEAM_EMAIL="team@shop.example")
        instance = dg.DagsterInstance.ephemeral()
        defs = build_defs()
        job = defs.resolve_job_def("stripe_workflows")
        state.lose_next_responses(10_000)
        first = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False,
                                       run_config=_no_retries(s_srv.base_url))
        assert not first.success

        def ours():
            return [r for r in state.objects("refund") if (r.get("metadata") or {}).get("giftflow_key")]

        refunded = {r["charge"] for r in ours()}
        assert len(refunded) == refundable[day] > 0  # carried out at Stripe, unconfirmed in the ledger
        state.lose_next_responses(0)
        assert state.expire_idempotency_keys() > 0

        # The step's retry, days later, with the plan the failed run made (a retried step reads its input again).
        plan = first.output_for_node("workflow_plan")
        with dg.build_resources({name: defs.resources[name] for name in ("stripe_api", "store", "notifier")}) as r:
            report = apply_workflow_plan(plan, r.stripe_api.get_client(), r.store.get_client(), r.notifier.get_client(),
                                         dry_run=False,
                                         partition=day.isoformat(), run_id="retry")
        assert report.failures == [], report.failures
        assert report.per_rule()["refund_small_fraud_warnings"]["refunded"] == len(refunded)
        per_charge = Counter(r["charge"] for r in ours())
        assert set(per_charge) == refunded and set(per_charge.values()) == {1}, per_charge
        assert state.stats()["by_route"]["POST /v1/refunds"]["writes"] == len(refunded)
