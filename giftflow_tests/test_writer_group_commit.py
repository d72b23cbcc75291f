"""The customer writer's group commit: many writer threads, one transaction for what they have waiting, each
thread back only once its own records are committed, and a bad record failing only its own write."""

import threading

import pytest

from giftflow.adapters.store import GiftflowStore, MirroredCustomers, PlannedWrite, WriteOutcome
from giftflow.services.customer_writer import GroupCommit

THREADS, WRITES = 8, 40


class CountingStore:
    """The store, counting transactions and refusing any batch that holds the op_key `bad`."""

    def __init__(self, store: GiftflowStore):
        self.store, self.transactions, self.lock = store, 0, threading.Lock()

    def record_writes(self, records):
        records = list(records)
        with self.lock:
            self.transactions += 1
        if any(getattr(r, "op_key", None) == "bad" for r in records):
            raise ValueError("refused by the database")
        self.store.record_writes(records)


@pytest.fixture
def store(tmp_path):
    return GiftflowStore(database_url=f"sqlite:///{tmp_path}/store.sqlite")


def test_threads_share_commits_and_each_sees_its_own_records_committed(store):
    counting = CountingStore(store)
    commits = GroupCommit(counting)  # type: ignore[arg-type]
    seen_planned = []

    def writer(t: int) -> None:
        for i in range(WRITES):
            key = f"k{t}-{i}"
            commits.record(PlannedWrite(key, "update_customer", f"cus_{t}_{i}", {"i": i}, None, "run"))
            seen_planned.append(store.ledger_entries([key])[key]["status"] == "planned")  # committed before "sending"
            commits.record(
                WriteOutcome(key, "sent", request_id=f"req_{t}_{i}", object_id=f"cus_{t}_{i}"),
                MirroredCustomers([{"id": f"cus_{t}_{i}", "email": None, "created": 1, "metadata": {}}]),
            )

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen_planned) and len(seen_planned) == THREADS * WRITES
    ledger = store.ledger_frame()
    assert len(ledger) == THREADS * WRITES and set(ledger["status"]) == {"sent"}
    assert len(store.load_customers()) == THREADS * WRITES
    assert counting.transactions < 2 * THREADS * WRITES  # shared: fewer commits than records


def test_a_record_the_database_refuses_fails_only_its_own_submission(store):
    counting = CountingStore(store)
    commits = GroupCommit(counting)  # type: ignore[arg-type]
    errors: dict[str, BaseException | None] = {}
    start = threading.Barrier(THREADS)

    def writer(key: str) -> None:
        start.wait()
        try:
            commits.record(PlannedWrite(key, "update_customer", "cus_1", {}, None, "run"))
            errors[key] = None
        except ValueError as exc:
            errors[key] = exc

    keys = ["bad", *[f"ok{i}" for i in range(THREADS - 1)]]
    threads = [threading.Thread(target=writer, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(errors["bad"], ValueError)
    assert all(errors[k] is None for k in keys[1:])
    assert set(store.ledger_entries(keys)) == set(keys[1:])
