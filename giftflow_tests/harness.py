"""Real servers for tests and benchmarks: a throwaway PostgreSQL cluster, and the production shape
(the repo's dagster.yaml on PostgreSQL, dagster-daemon and dagster-webserver as processes) against the
simulators."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

import httpx
import sqlalchemy as sa

from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def pg_bindir() -> Path | None:
    """The server binaries of the highest PostgreSQL version installed, by number (16 after 9.6, not before)."""

    def version(path: str) -> tuple[int, ...]:
        number = Path(path).parents[1].name
        return tuple(int(p) for p in number.split(".")) if number.replace(".", "").isdigit() else ()

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary directory on a free port; yields its SQLAlchemy URL.
    `postgres` refuses to run as root, so as root it runs as `nobody`."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries are not installed")
    tmp = tempfile.mkdtemp(prefix="giftflow-pg-")
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(tmp, "nobody")
    port, data = free_port(), f"{tmp}/data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            data,
            "-l",
            f"{tmp}/log",
            "-w",
            "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=300",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Stack:
    url: str  # the webserver
    env: dict
    home: Path
    cardivo_url: str
    stripe_url: str
    cardivo: cardivo.CardivoState
    stripe: stripe.StripeState
    world: dataset.World
    workspace: Path = ROOT / "workspace.yaml"  # the repo's (python_module), or the test's grpc_server one

    def dagster(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dagster", *args, "-w", str(self.workspace)],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if "errors" in body:
            raise RuntimeError(body["errors"])
        return body["data"]

    def log(self, name: str, tail: int = 3000) -> str:
        return (self.home.parent / f"{name}.log").read_text()[-tail:]


@contextlib.contextmanager
def production_stack(
    postgres_url: str,
    workdir: Path,
    days: list[date],
    *,
    stripe_limit: int,
    redemptions_per_day: int = 6,
    customers: int = 40,
    sensor_interval_s: int | None = 2,
    extra_env: dict | None = None,
    grpc: bool = False,
) -> Iterator[Stack]:
    """dagster-webserver and dagster-daemon on the repo's dagster.yaml (PostgreSQL), giftflow's store on
    PostgreSQL, the simulators in this process; the Stripe simulator refuses calls past `stripe_limit`/s and
    giftflow is given the same budget. `sensor_interval_s=None` keeps giftflow's default interval.

    `grpc=True` is deploy/'s topology on one machine: giftflow in its own code server (`dagster code-server
    start -m giftflow`, as deploy/Dockerfile runs it), and the webserver and the daemon reaching it through a
    workspace file with `grpc_server` written into `workdir` (the repo's workspace.yaml stays as it is); the
    daemon launches runs through that code server."""
    world = dataset.build_world(21, days, redemptions_per_day=redemptions_per_day, customers=customers)
    cardivo_state, stripe_state = cardivo.CardivoState.from_world(world), stripe.StripeState(world.customers)
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    suffix = workdir.name.lower().replace("-", "_")[-20:]
    dagster_db = create_database(postgres_url, f"dagster_{suffix}")
    giftflow_db = create_database(postgres_url, f"giftflow_{suffix}")
    pg = urlparse(dagster_db)
    procs: list[subprocess.Popen] = []
    with (
        BackgroundServer(cardivo.create_app(cardivo_state, "ck")) as c_srv,
        BackgroundServer(stripe.create_app(stripe_state, api_key="sk_test_e2e", rate_limit_per_s=stripe_limit)) as s_srv,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTFLOW_", "DAGSTER_"))}
        env.update(
            {
                "DAGSTER_HOME": str(home),
                "TMPDIR": str(workdir),
                "DAGSTER_POSTGRES_HOST": pg.hostname,
                "DAGSTER_POSTGRES_PORT": str(pg.port),
                "DAGSTER_POSTGRES_USER": "postgres",
                "DAGSTER_POSTGRES_PASSWORD": "",
                "DAGSTER_POSTGRES_DB": pg.path.lstrip("/"),
                "CARDIVO_API_BASE": c_srv.base_url,
                "CARDIVO_API_KEY": "ck",
                "STRIPE_API_BASE": s_srv.base_url,
                "STRIPE_API_KEY": "sk_test_e2e",
                "GIFTFLOW_DATABASE_URL": giftflow_db,
                "GIFTFLOW_STRIPE_MAX_RPS": str(stripe_limit),
                # As the README's production steps and deploy/ set them (README, Scale).
                "DAGSTER_EVENT_BATCH_SIZE": "200",
                "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
                **({"GIFTFLOW_SENSOR_INTERVAL_S": str(sensor_interval_s)} if sensor_interval_s else {}),
                **(extra_env or {}),
            }
        )
        # Create the instance's tables once, before two processes race to do it.
        subprocess.run(
            [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"],
            env=env,
            check=True,
            timeout=120,
        )
        # Set the write pool's limit before runs start: left to the first runs, several initialise it at once
        # and Dagster's insert collides (seen in a 60-day backfill: one run failed on it).
        subprocess.run(
            [str(BIN / "dagster"), "instance", "concurrency", "set", "stripe_customer_writes", "1"],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        port, workspace = free_port(), ROOT / "workspace.yaml"
        try:
            if grpc:
                workspace = workdir / "workspace.yaml"
                code_port = free_port()
                workspace.write_text(
                    f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {code_port}\n"
                    "      location_name: giftflow\n"
                )
                procs.append(
                    _start(
                        "code_server",
                        [
                            str(BIN / "dagster"),
                            "code-server",
                            "start",
                            "-m",
                            "giftflow",
                            "-d",
                            str(ROOT),
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(code_port),
                            "--location-name",
                            "giftflow",
                        ],
                        env,
                        workdir,
                    )
                )
                wait_for_grpc(code_port, env, timeout=120)
            for name, cmd in (
                ("webserver", [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]),
                ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]),
            ):
                procs.append(_start(name, cmd, env, workdir))
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/server_info", timeout=120)
            yield Stack(url, env, home, c_srv.base_url, s_srv.base_url, cardivo_state, stripe_state, world, workspace)
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            # Code servers the webserver and daemon spawned are in their sessions, already ended above by
            # process group: nothing is stopped by name or pattern.


def _start(name: str, cmd: list[str], env: dict, workdir: Path) -> subprocess.Popen:
    """A process in its own session (stopped by process group), logging to `workdir/<name>.log`."""
    with open(workdir / f"{name}.log", "w") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def wait_for_grpc(port: int, env: dict, timeout: float = 120.0) -> None:
    """Until a Dagster code server on 127.0.0.1:`port` answers its health check (it loads the code first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checked = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if checked.returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"code server on port {port} did not answer within {timeout} s")


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } } }"""


def launch_backfill(stack: Stack, job: str, partitions: list[str]) -> str:
    launched = stack.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "selector": {
                    "partitionSetName": f"{job}_partition_set",
                    "repositorySelector": {"repositoryLocationName": "giftflow", "repositoryName": "__repository__"},
                },
                "partitionNames": partitions,
            }
        },
    )["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(launched)
    return launched["backfillId"]


def backfill_runs(stack: Stack, backfill_id: str) -> list[dict]:
    """The backfill's runs as dicts (status, start, end), read from the instance's PostgreSQL storage."""
    code = (
        "import json, sys, dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    rs = i.get_run_records(filters=dg.RunsFilter(tags={'dagster/backfill': sys.argv[1]}))\n"
        "    print(json.dumps([{'status': r.dagster_run.status.value, 'start': r.start_time, 'end': r.end_time}"
        " for r in rs]))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, backfill_id], env=stack.env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def wait_for_backfill(stack: Stack, backfill_id: str, expected_runs: int, timeout: float) -> tuple[str, list[dict]]:
    began = time.monotonic()
    status, runs = None, []
    while time.monotonic() - began < timeout:
        status = stack.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        runs = backfill_runs(stack, backfill_id)
        # Retried runs carry the backfill's tag too: at least one finished run per partition, none running.
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if status != "REQUESTED" and len(done) >= expected_runs and len(done) == len(runs):
            break
        time.sleep(2)
    return status, runs


def most_at_once(runs: list[dict]) -> int:
    spans = [(r["start"] or 0, r["end"] or float("inf")) for r in runs]
    return max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)


RUN_EVENTS = """
import json, sys, dagster as dg
phases = ("RUN_ENQUEUED", "RUN_DEQUEUED", "RUN_STARTING", "RUN_START", "RUN_SUCCESS", "RUN_FAILURE")
out = []
with dg.DagsterInstance.get() as instance:
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name=sys.argv[1]), limit=int(sys.argv[2])):
        run = record.dagster_run
        events = {"created": record.create_timestamp.timestamp()}
        steps = {}
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event_type.name if entry.dagster_event_type else None
            if kind in phases:
                events.setdefault(kind, entry.timestamp)
            elif kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE") and entry.step_key:
                steps.setdefault(entry.step_key, {})[kind] = entry.timestamp
        origin = run.remote_job_origin.repository_origin.code_location_origin if run.remote_job_origin else None
        out.append({"run_id": run.run_id, "status": run.status.value, "tags": dict(run.tags), "events": events,
                    "steps": steps, "origin": type(origin).__name__, "origin_port": getattr(origin, "port", None)})
print(json.dumps(out))
"""


def run_timelines(stack: Stack, job: str, limit: int = 200) -> list[dict]:
    """The job's latest runs with their event times (creation, queue, launch, each step, end), from the instance."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", RUN_EVENTS, job, str(limit)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def run_breakdown(run: dict) -> dict[str, float]:
    """Where one run's time went, in seconds: queued (created until dequeued), launch (until the run process
    has started: process start and code load), each step, and the end (last step until the run is done)."""
    e, steps = run["events"], run["steps"]
    end = e.get("RUN_SUCCESS") or e.get("RUN_FAILURE")
    parts = {"queued": e.get("RUN_DEQUEUED", e.get("RUN_STARTING", e["created"])) - e["created"]}
    if "RUN_START" in e:
        parts["launch"] = e["RUN_START"] - e.get("RUN_DEQUEUED", e.get("RUN_STARTING", e["created"]))
    last = e.get("RUN_START")
    for key, t in sorted(steps.items(), key=lambda kv: kv[1].get("STEP_START", 0)):
        done = t.get("STEP_SUCCESS") or t.get("STEP_FAILURE")
        if "STEP_START" in t and done:
            parts[key] = done - t["STEP_START"]
            last = max(last or done, done)
    if end and last:
        parts["end"] = end - last
    if end:
        parts["total"] = end - e["created"]
    return parts
