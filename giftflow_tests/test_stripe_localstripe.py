"""giftflow's Stripe resource and writer against localstripe, a Stripe fake nobody here wrote."""

import pandas as pd

from giftflow.adapters.config_files import giftcard_sync_spec
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient, idempotency_key
from giftflow.domain.giftcard import SKIP, customers_frame
from giftflow.domain.redemptions import validate_redemptions
from giftflow.services.customer_writer import apply_sync_plan
from giftflow.services.giftcard_sync import plan_customer_updates
from giftflow_tests.factories import day, redemption


def _stripe(base):
    return StripeClient(api_key="sk_test_12345", api_base=base, max_requests_per_second=50)


def test_create_update_list_and_idempotent_replay(localstripe):
    api = _stripe(localstripe)
    params = {"email": "ana@x.com", "name": "Ana", "metadata": {"a": "1"}}
    key = idempotency_key("create_customer", "ana@x.com", params)
    first = api.create_customer(params, key)
    assert first.object["email"] == "ana@x.com"
    api.update_customer(first.object["id"], {"metadata": {"b": "2"}}, idempotency_key("u", "x", {"b": 2}))
    listed = [c for page, _ in api.iter_customers(page_size=1) for c in page]
    assert [c["id"] for c in listed] == [first.object["id"]]
    assert listed[0]["metadata"] == {"a": "1", "b": "2"}  # metadata merges
    assert [c["id"] for c in api.list_customers_by_email("ana@x.com")] == [first.object["id"]]


def test_paging_reads_every_customer(localstripe):
    api = _stripe(localstripe)
    made = {api.create_customer({"email": f"p{i}@x.com"}, f"k-{i}").object["id"] for i in range(7)}
    pages = list(api.iter_customers(page_size=3))
    assert {c["id"] for page, _ in pages for c in page} == made
    assert pages[-1][1] == 3  # three calls for seven customers in pages of three


def test_whole_plan_applied_then_rerun_is_noop(localstripe, tmp_path):
    api = _stripe(localstripe)
    store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/s.sqlite")
    cus = api.create_customer({"email": "Ana@X.com"}, "seed-1").object
    frame, _ = validate_redemptions([redemption(email="ana@x.com", amount=1200), redemption(email="new@x.com")])
    for mode_pass in range(2):
        customers = [c for page, _ in api.iter_customers() for c in page]
        plan = plan_customer_updates(frame, customers_frame(customers), *day("2026-11-20"), giftcard_sync_spec("upsert"))
        report = apply_sync_plan(
            plan[plan["action"] != SKIP],
            api,
            store,
            spec=giftcard_sync_spec("upsert"),
            dry_run=False,
            partition="2026-11-20",
            run_id="r",
        )
        assert report.failures == []
        assert report.writes == (2 if mode_pass == 0 else 0)
    after = {c["email"]: c for page, _ in api.iter_customers() for c in page}
    assert after["Ana@X.com"]["id"] == cus["id"]
    assert after["Ana@X.com"]["metadata"]["giftcard_redeemed_total"] == "1200"
    assert after["new@x.com"]["metadata"]["giftcard_redemptions"] == "1"
    ledger = store.ledger_frame()
    assert set(ledger["status"]) == {"sent"} and len(ledger) == 2
    assert ledger["stripe_object_id"].notna().all()
    assert isinstance(ledger, pd.DataFrame)
