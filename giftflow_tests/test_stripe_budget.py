"""One Stripe budget for every host: on PostgreSQL, calls from processes that share no file are spaced by the
one budget row in giftflow's database."""

import multiprocessing as mp
import time

import sqlalchemy as sa

from giftflow.adapters.stripe import PostgresBudget
from giftflow_tests.harness import create_database

RATE = 20
CALLS = 10


def _host(url: str, out) -> None:
    budget = PostgresBudget(url, RATE)  # its own engine and connections: another host as far as it can tell
    times = []
    for _ in range(CALLS):
        budget.try_acquire()
        times.append(time.time())
    out.put(times)


def test_processes_on_separate_hosts_share_one_budget(postgres_url):
    url = create_database(postgres_url, "budget_hosts")
    out = mp.get_context("spawn").Queue()
    hosts = [mp.get_context("spawn").Process(target=_host, args=(url, out)) for _ in range(3)]
    for h in hosts:
        h.start()
    times = sorted(t for _ in hosts for t in out.get(timeout=60))
    for h in hosts:
        h.join(30)
    # 30 calls at 20/s take 29 intervals at least, whichever host made them: the budget is one, not three.
    assert times[-1] - times[0] >= (3 * CALLS - 1) / RATE - 0.05, times
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM giftflow_stripe_budget")).scalar() == 1


def test_the_budget_waits_for_its_slot_and_never_lends_ahead(postgres_url):
    url = create_database(postgres_url, "budget_idle")
    budget = PostgresBudget(url, RATE)
    time.sleep(1.0)  # an idle budget does not bank slots: the next calls are still spaced
    began = time.monotonic()
    for _ in range(5):
        budget.try_acquire()
    assert time.monotonic() - began >= 4 / RATE - 0.02
