"""Metadata giftflow does not own survives every giftflow write, counted at the server: the simulator's stored
customers keep their other keys after the gift-card sync and the VIP tag, and no request body giftflow sends
names another key (not even to clear it, which is how Stripe deletes one)."""

import dagster as dg
import pytest

from giftflow_simulators import dataset
from giftflow_tests.conftest import QUIET

UPDATE = "POST /v1/customers/{id}"
GIFTCARD_KEYS = {
    "giftcard_redeemed_total",
    "giftcard_currency",
    "giftcard_redemptions",
    "giftcard_last_redeemed_at",
    "giftcard_last4",
}


def _others(i: int) -> dict:
    """Keys someone else keeps on the customer: a CRM id, a segment, and a tier giftflow does not set."""
    return {"crm_id": f"C-{i}", "segment": "b2b" if i % 2 else "retail", "loyalty_tier": "silver"}


@pytest.fixture
def world(world_days):
    world = dataset.build_world(11, world_days)
    for i, customer in enumerate(world.customers):
        customer["metadata"] = {**(customer.get("metadata") or {}), **_others(i)}
    return world


@pytest.mark.e2e  # both jobs in process: ~7 s
def test_other_metadata_keys_survive_the_giftcard_sync_and_the_vip_tag(world, world_days, sims, giftflow):
    state = sims.stripe_state
    others = {c["id"]: _others(i) for i, c in enumerate(world.customers)}
    defs, instance = giftflow.but(team_email="team@shop.example").defs(), dg.DagsterInstance.ephemeral()

    def stored_others_intact():
        for cid, kept in others.items():
            metadata = state.get(cid)["metadata"]
            assert {k: metadata.get(k) for k in kept} == kept, (cid, metadata)

    for job_name, allowed in (("giftcard_sync", GIFTCARD_KEYS), ("stripe_workflows", {"Tier"})):
        state.reset_stats()  # also empties the request log: this job's requests only
        job = defs.resolve_job_def(job_name)
        for day in world_days:
            assert job.execute_in_process(partition_key=day.isoformat(), instance=instance, run_config=QUIET).success
            stored_others_intact()  # after every run, not only at the end
        sent = [r["params"].get("metadata") for r in state.requests_to(UPDATE)]
        assert sent and all(isinstance(m, dict) for m in sent), sent  # it wrote, and never `metadata=""`
        assert all(m.keys() <= allowed for m in sent), [m for m in sent if not m.keys() <= allowed]
    tagged = [c for c in state.customers() if c["metadata"].get("Tier") == "VIP"]
    assert tagged and all(c["metadata"].keys() > others[c["id"]].keys() for c in tagged)
