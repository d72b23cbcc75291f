"""Exactly once after Stripe has forgotten the idempotency keys (it prunes them after 24 hours).

A create or a refund was planned and sent, Stripe carried it out, the answer was lost, and the step is retried
days later: the same idempotency key now makes a second object, so only giftflow's lookup (a create by its
e-mail, a refund by the ledger key in its metadata) stands between the retry and a duplicate."""

from collections import Counter
from datetime import date, datetime, timezone

import dagster as dg
import pytest

from giftflow.services.workflow_actions import apply_workflow_plan
from giftflow_tests.conftest import QUIET

DAY = date(2026, 11, 18)


def _no_retries(sims) -> dict:
    """The first attempt's client: no SDK retry, so a lost answer stays lost (as when the process dies)."""
    return {
        **QUIET,
        "resources": {
            "stripe_api": {"config": {"max_network_retries": 0, "api_key": sims.stripe_key, "api_base": sims.stripe_url}}
        },
    }


@pytest.mark.e2e  # ~4 s
def test_an_unconfirmed_create_retried_after_the_keys_expired_is_found_by_email(world, sims, giftflow):
    state = sims.stripe_state
    instance = dg.DagsterInstance.ephemeral()
    job = giftflow.but(sync_mode="upsert").job("giftcard_sync")
    state.lose_next_responses(10_000)  # every write is carried out at Stripe, every answer is lost
    first = job.execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False, run_config=_no_retries(sims)
    )
    assert not first.success
    ours = {c["id"] for c in world.customers}
    made = [c for c in state.customers() if c["id"] not in ours]
    assert made, "the day must need creates for this test to mean anything"
    state.lose_next_responses(0)
    assert state.expire_idempotency_keys() > 0  # "days later": Stripe has pruned every key
    creates = state.stats()["by_route"]["POST /v1/customers"]["writes"]

    again = job.execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, run_config=QUIET, op_selection=["giftcard_customer_updates"]
    )  # the step's retry
    assert again.success
    assert state.stats()["by_route"]["POST /v1/customers"]["writes"] == creates  # not one more create
    emails = Counter(c["email"] for c in state.customers() if c["id"] not in ours)
    assert emails and max(emails.values()) == 1, emails
    md = again.asset_materializations_for_node("giftcard_customer_updates")[0].metadata
    assert md["created"].value == 0


def _day(obj: dict) -> date:
    return datetime.fromtimestamp(obj["created"], timezone.utc).date()


def test_an_unconfirmed_refund_retried_after_the_keys_expired_is_found_by_its_metadata(sims, giftflow):
    state = sims.stripe_state
    refundable = Counter()  # day -> warnings the refund rule acts on (the contract's table)
    for w in state.objects("radar.early_fraud_warning"):
        ch = state.retrieve("charge", w["charge"])
        rest = ch["amount"] - ch["amount_refunded"]
        if ch["currency"] == "usd" and not ch["disputed"] and not ch["refunded"] and 0 < rest < 1500:
            refundable[_day(w)] += 1
    day = max(refundable, key=refundable.get)
    instance = dg.DagsterInstance.ephemeral()
    defs = giftflow.but(refunds_enabled=True, team_email="team@shop.example").defs()
    job = defs.resolve_job_def("stripe_workflows")
    state.lose_next_responses(10_000)
    first = job.execute_in_process(
        partition_key=day.isoformat(), instance=instance, raise_on_error=False, run_config=_no_retries(sims)
    )
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
        report = apply_workflow_plan(
            plan,
            r.stripe_api.get_client(),
            r.store.get_client(),
            r.notifier.get_client(),
            dry_run=False,
            partition=day.isoformat(),
            run_id="retry",
        )
    assert report.failures == [], report.failures
    assert report.per_rule()["refund_small_fraud_warnings"]["refunded"] == len(refunded)
    per_charge = Counter(r["charge"] for r in ours())
    assert set(per_charge) == refunded and set(per_charge.values()) == {1}, per_charge
    assert state.stats()["by_route"]["POST /v1/refunds"]["writes"] == len(refunded)
