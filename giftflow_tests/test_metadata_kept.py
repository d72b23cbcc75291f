"""Metadata giftflow does not own survives every giftflow write, counted at the server: the simulator's stored
customers keep their other keys after the gift-card sync and the VIP tag, and no request body giftflow sends
names another key (not even to clear it, which is how Stripe deletes one)."""

from datetime import date

import dagster as dg
import pytest

from giftflow.orchestration.definitions import build_defs
from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer

DAYS = [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)]
KEY = "sk_test_meta"
UPDATE = "POST /v1/customers/{id}"
GIFTCARD_KEYS = {"giftcard_redeemed_total", "giftcard_currency", "giftcard_redemptions", "giftcard_last_redeemed_at",
                 "giftcard_last4"}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _others(i: int) -> dict:
    """Keys someone else keeps on the customer: a CRM id, a segment, and a tier giftflow does not set."""
    return {"crm_id": f"C-{i}", "segment": "b2b" if i % 2 else "retail", "loyalty_tier": "silver"}


@pytest.fixture
def world():
    world = dataset.build_world(11, DAYS)
    for i, customer in enumerate(world.customers):
        customer["metadata"] = {**(customer.get("metadata") or {}), **_others(i)}
    return world


def test_other_metadata_keys_survive_the_giftcard_sync_and_the_vip_tag(world, tmp_path, monkeypatch):
    state = stripe.StripeState.from_world(world)
    others = {c["id"]: _others(i) for i, c in enumerate(world.customers)}
    for name in ("GIFTFLOW_DRY_RUN", "GIFTFLOW_SYNC_MODE", "GIFTFLOW_RULES", "GIFTFLOW_SMTP_HOST",
                 "GIFTFLOW_STRIPE_RATE_DB"):
        monkeypatch.delenv(name, raising=False)
    with BackgroundServer(cardivo.create_app(cardivo.CardivoState.from_world(world), "ck")) as c_srv, \
            BackgroundServer(stripe.create_app(state, api_key=KEY)) as s_srv:
        for k, v in {"DAGSTER_HOME": str(tmp_path), "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": s_srv.base_url,
                     "CARDIVO_API_BASE": c_srv.base_url, "CARDIVO_API_KEY": "ck",
                     "GIFTFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/giftflow.sqlite",
                     "GIFTFLOW_TEAM_EMAIL": "team@shop.example"}.items():
            monkeypatch.setenv(k, v)
        defs, instance = build_defs(), dg.DagsterInstance.ephemeral()

        def stored_others_intact():
            for cid, kept in others.items():
                metadata = state.get(cid)["metadata"]
                assert {k: metadata.get(k) for k in kept} == kept, (cid, metadata)

        for job_name, allowed in (("giftcard_sync", GIFTCARD_KEYS), ("stripe_workflows", {"Tier"})):
            state.reset_stats()  # also empties the request log: this job's requests only
            job = defs.resolve_job_def(job_name)
            for day in DAYS:
                assert job.execute_in_process(partition_key=day.isoformat(), instance=instance,
                                              run_config=QUIET).success
                stored_others_intact()  # after every run, not only at the end
            sent = [r["params"].get("metadata") for r in state.requests_to(UPDATE)]
            assert sent and all(isinstance(m, dict) for m in sent), sent  # it wrote, and never `metadata=""`
            assert all(m.keys() <= allowed for m in sent), [m for m in sent if not m.keys() <= allowed]
        tagged = [c for c in state.customers() if c["metadata"].get("Tier") == "VIP"]
        assert tagged and all(c["metadata"].keys() > others[c["id"]].keys() for c in tagged)
