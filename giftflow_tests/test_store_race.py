"""Many processes opening one new SQLite store at once: each creates the tables, none fails.

Processes, not threads: the engine (and the table creation that comes with it) is cached per process, so only
separate processes race the way the steps of a backfill do."""

import multiprocessing

import pytest
import sqlalchemy as sa

from giftflow.adapters.store import GiftflowStore, metadata_obj

PROCESSES = 8
ROUNDS = 6  # fresh files: the race is in the first instant of a database's life


def _open(url: str, barrier, errors) -> None:
    try:
        barrier.wait(30)
        GiftflowStore(database_url=url).get_state("race")  # first use creates the tables
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the test with it
        import traceback

        errors.put(traceback.format_exc()[-1500:])


@pytest.mark.e2e  # starts 8 processes
def test_eight_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")  # each child starts with no engine cached, like a new step
    for round_ in range(ROUNDS):
        url = f"sqlite:///{tmp_path}/fresh{round_}.sqlite"
        barrier, errors = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(url, barrier, errors)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert not failures, f"round {round_}: {failures}"
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
        assert set(metadata_obj.tables) <= tables
