"""One Stripe budget for every host: on PostgreSQL, calls from processes that share no file are spaced by the
one budget row in giftflow's database."""

import multiprocessing as mp
import threading
import time

import sqlalchemy as sa

from giftflow.adapters.stripe import LocalBudget, PostgresBudget
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


def test_the_process_budget_spaces_calls_on_a_schedule_and_banks_only_its_catch_up():
    budget = LocalBudget(50, catch_up_s=0.1)
    time.sleep(0.3)  # idle: at most 0.1 s of slots banked (6 calls at once), then spaced
    began = time.monotonic()
    for _ in range(16):
        budget.try_acquire()
    assert 15 / 50 - 0.1 - 0.01 <= time.monotonic() - began < 15 / 50 - 0.1 + 0.15


def test_the_process_budget_spreads_calls_from_threads_evenly():
    budget, left = LocalBudget(100, catch_up_s=0), []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(10):
            budget.try_acquire()
            with lock:
                left.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left.sort()
    assert left[-1] - left[0] >= 79 / 100 - 0.01  # 80 calls: 79 intervals whatever the threads
    assert sum(1 for t in left if t <= left[0] + 0.2) <= 21 + 2  # no burst: 0.2 s holds 21 slots


def test_late_calls_after_a_stall_never_put_more_than_the_cap_in_one_second():
    """Calls whose slots passed while the process was stalled go at once, but only as far as the cap allows."""
    budget = LocalBudget(100, window_cap=100)
    now = time.monotonic()
    for number in range(95):  # 95 calls left half a second ago
        budget._count(-1 - number, now - 0.5)
    began = time.monotonic()
    for _ in range(5):  # room for 5 more in this second: no waiting beyond the schedule
        budget.try_acquire()
    assert time.monotonic() - began < 0.2
    budget.try_acquire()  # the 101st must wait until the 95 leave the window, half a second from now
    assert time.monotonic() - began >= 0.45


def test_a_call_held_up_on_the_way_counts_from_its_answer():
    """A call that left before a stall and reached Stripe after it is counted where Stripe counted it."""
    budget = LocalBudget(3, window_cap=3, catch_up_s=1)
    for _ in range(3):  # the usual time to an answer: about nothing
        budget.try_acquire()
        budget.answered()
    time.sleep(1.05)
    budget.try_acquire()  # this call is held up for 0.6 s on its way
    time.sleep(0.6)
    budget.answered()
    began = time.monotonic()
    budget.try_acquire()
    budget.try_acquire()
    assert time.monotonic() - began < 0.2
    budget.try_acquire()  # the 3rd since the held-up call reached Stripe: waits for it to leave the window
    assert time.monotonic() - began >= 0.9


def test_calls_that_take_long_to_answer_still_get_the_whole_pace():
    """300 ms to an answer (Stripe from afar): the calls in flight are not counted twice, the pace is kept."""
    budget, left, stop = LocalBudget(50, window_cap=51, catch_up_s=0), [], time.monotonic() + 4

    def caller() -> None:
        while time.monotonic() < stop:
            budget.try_acquire()
            left.append(time.monotonic())
            time.sleep(0.3)
            budget.answered()

    threads = [threading.Thread(target=caller) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steady = [t for t in left if stop - 3 <= t < stop]  # the last 3 s, the usual time to an answer known
    assert len(steady) >= 0.97 * 50 * 3, len(steady)
