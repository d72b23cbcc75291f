"""Stripe failing the way Stripe fails, through the real client path (StripeClient -> stripe SDK -> HTTP ->
the simulator), counted at the simulator: 429 and 5xx with and without Retry-After / Stripe-Should-Retry."""

import pytest
import stripe

from giftflow.adapters.stripe import StripeClient
from giftflow_simulators import stripe as stripe_sim
from giftflow_simulators.server import BackgroundServer

KEY = "sk_test_faults"
UPDATE = "POST /v1/customers/{id}"
CUSTOMER = {
    "id": "cus_FAULTS",
    "email": "ana@example.com",
    "created": 1_700_000_000,
    "metadata": {"crm_id": "C-7", "Tier": "gold"},
}


@pytest.fixture
def sim(monkeypatch):
    for name in ("DAGSTER_HOME", "GIFTFLOW_STRIPE_RATE_DB"):  # the in-process limiter, not a shared file
        monkeypatch.delenv(name, raising=False)
    state = stripe_sim.StripeState([CUSTOMER])
    with BackgroundServer(stripe_sim.create_app(state, api_key=KEY)) as srv:
        yield state, StripeClient(api_key=KEY, api_base=srv.base_url, max_requests_per_second=100)


def _update(api: StripeClient) -> dict:
    return api.update_customer(CUSTOMER["id"], {"metadata": {"giftcard_redemptions": "3"}}, "giftflow-test-key-1")


@pytest.mark.parametrize(
    "status, retry_after, should_retry",
    [
        (429, None, None),  # Stripe's usual 429: the SDK does not retry it, giftflow's backoff does
        (429, None, True),  # a 429 Stripe marks retryable (lock timeout): the SDK retries it
        (429, "1", None),
        (500, None, None),  # 5xx: the SDK retries with the same idempotency key
        (503, None, True),
        (502, "1", None),
    ],
    ids=lambda v: str(v),
)
def test_two_failures_then_the_write_lands_once_after_three_attempts(sim, status, retry_after, should_retry):
    state, api = sim
    state.fail_next(2, status, route=UPDATE, retry_after=retry_after, should_retry=should_retry)
    result = _update(api)
    assert result.object["metadata"]["giftcard_redemptions"] == "3"
    counts = state.stats()["by_route"][UPDATE]
    assert (counts["requests"], counts.get("injected"), counts.get("writes")) == (3, 2, 1), counts
    attempts = state.requests_to(UPDATE)
    assert {a["idempotency_key"] for a in attempts} == {"giftflow-test-key-1"}  # every attempt: one key
    assert state.get(CUSTOMER["id"])["metadata"] == {**CUSTOMER["metadata"], "giftcard_redemptions": "3"}


def test_a_5xx_stripe_says_not_to_retry_is_not_retried(sim):
    state, api = sim
    state.fail_next(1, 500, route=UPDATE, should_retry=False)
    with pytest.raises(stripe.APIError):
        _update(api)
    counts = state.stats()["by_route"][UPDATE]
    assert (counts["requests"], counts.get("writes", 0)) == (1, 0)
    assert state.get(CUSTOMER["id"])["metadata"] == CUSTOMER["metadata"]


@pytest.mark.e2e  # waits out a real Retry-After: ~3 s
def test_a_429_with_retry_after_is_retried_no_sooner_than_it_asks(sim):
    state, api = sim
    state.fail_next(1, 429, route=UPDATE, retry_after="3")  # longer than giftflow's first backoff (<= 1.5 s)
    _update(api)
    first, second = state.requests_to(UPDATE)
    assert second["at"] - first["at"] >= 3.0, second["at"] - first["at"]
