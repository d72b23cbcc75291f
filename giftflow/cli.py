"""giftflow: keep Stripe in step with Cardivo gift-card redemptions and your own data (README.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import httpx

from giftflow.settings import Settings, SettingsError

DEMO_CARDIVO_KEY = "cardivo_demo_key"
DEMO_STRIPE_KEY = "sk_test_giftflow_demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@contextlib.contextmanager
def simulators(days: list[date], seed: int, stripe_rps: float | None = None) -> Iterator[dict[str, str]]:
    """Both simulators on free loopback ports, seeded with one coherent world; yields the env to use them."""
    from giftflow_simulators import cardivo, dataset, stripe
    from giftflow_simulators.server import BackgroundServer

    world = dataset.build_world(seed, days)
    cardivo_state = cardivo.CardivoState.from_world(world)
    stripe_state = stripe.StripeState.from_world(world)
    with (
        BackgroundServer(cardivo.create_app(cardivo_state, DEMO_CARDIVO_KEY)) as cardivo_srv,
        BackgroundServer(
            stripe.create_app(stripe_state, api_key=DEMO_STRIPE_KEY, rate_limit_per_s=stripe_rps)
        ) as stripe_srv,
    ):
        yield {
            "CARDIVO_API_BASE": cardivo_srv.base_url,
            "CARDIVO_API_KEY": DEMO_CARDIVO_KEY,
            "STRIPE_API_BASE": stripe_srv.base_url,
            "STRIPE_API_KEY": DEMO_STRIPE_KEY,
        }


def _stripe_writes(env: dict[str, str]) -> int:
    return int(httpx.get(env["STRIPE_API_BASE"] + "/_sim/stats").json()["writes"])


def _metadata(result, asset: str) -> dict:
    """The metadata values of `asset`'s materialization in an in-process run (its node has the asset's name)."""
    import dagster as dg

    for mat in result.asset_materializations_for_node(asset):
        if mat.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in mat.metadata.items()}
    return {}


def _run_days(defs, instance, days: list[date], env: dict[str, str], label: str) -> int:
    job = defs.resolve_job_def("giftcard_sync")
    print(f"\n{label}")
    # "why left out" is last: a long reason cannot push the columns after it out of line
    print(
        f"{'day':<12}{'redemptions':>12}{'quarantined':>12}{'updated':>9}{'created':>9}{'unchanged':>10}"
        f"{'left out':>9}{'Stripe writes':>14}  why left out"
    )
    total = 0
    for day in days:
        before = _stripe_writes(env)
        result = job.execute_in_process(
            partition_key=day.isoformat(), instance=instance, raise_on_error=False, run_config=QUIET
        )
        writes = _stripe_writes(env) - before
        total += writes
        fetched = _metadata(result, "cardivo_redemptions")
        plan = _metadata(result, "giftcard_customer_plan")
        applied = _metadata(result, "giftcard_customer_updates")
        why = (
            ", ".join(f"{k.removeprefix('left_out_')} {v}" for k, v in sorted(plan.items()) if k.startswith("left_out_"))
            or "-"
        )
        status = "" if result.success else "  (run failed: see the Dagster UI)"
        if not result.success:
            FAILED.append(f"{label}: {day.isoformat()}")
        print(
            f"{day.isoformat():<12}{fetched.get('valid', 0):>12}{fetched.get('quarantined', 0):>12}"
            f"{applied.get('updated', applied.get('would_update', 0)):>9}"
            f"{applied.get('created', applied.get('would_create', 0)):>9}"
            f"{applied.get('unchanged', 0):>10}{applied.get('left_out', 0):>9}{writes:>14}  {why}{status}"
        )
    print(f"Stripe writes in total: {total}")
    return total


def per_rule_counts(result) -> dict[str, dict[str, int]]:
    """`workflow_actions`' per-rule table of an in-process run as {rule: {outcome: n}}, the outcomes that occurred."""
    per_rule = _metadata(result, "workflow_actions").get("per_rule")
    return {
        rec.data["rule"]: {k: v for k, v in rec.data.items() if k != "rule" and v}
        for rec in (per_rule.records if per_rule is not None else [])
    }


# The README's vocabulary (giftflow/domain/rules.py, services/workflow_actions.py); others that occur are appended.
OUTCOMES = (
    "matched",
    "mailed",
    "tagged",
    "refunded",
    "escalated",
    "would_refund",
    "unchanged",
    "done_before",
    "not_applicable",
)


def _run_workflows(defs, instance, days: list[date], env: dict[str, str], outbox: str, label: str) -> int:
    job = defs.resolve_job_def("stripe_workflows")
    before_writes, before_mails = _stripe_writes(env), _count_files(outbox)
    before_files = set(os.listdir(outbox)) if os.path.isdir(outbox) else set()
    totals: dict[str, dict[str, int]] = {}
    failed = []
    for day in days:
        result = job.execute_in_process(
            partition_key=day.isoformat(), instance=instance, raise_on_error=False, run_config=QUIET
        )
        failed += [] if result.success else [day.isoformat()]
        if not result.success:
            FAILED.append(f"{label}: {day.isoformat()}")
        for rule, counts in per_rule_counts(result).items():
            for outcome, n in counts.items():
                totals.setdefault(rule, {}).setdefault(outcome, 0)
                totals[rule][outcome] += n
    print(f"\n{label}")
    outcomes = list(OUTCOMES) + sorted({o for c in totals.values() for o in c} - set(OUTCOMES))
    width = max([len("rule"), *map(len, totals)]) + 2  # columns sized by their content: always aligned
    print(f"{'rule':<{width}}" + "".join(f"{o:>{len(o) + 2}}" for o in outcomes))
    for rule, counts in totals.items():
        print(f"{rule:<{width}}" + "".join(f"{counts.get(o, 0):>{len(o) + 2}}" for o in outcomes))
    writes, mails = _stripe_writes(env) - before_writes, _count_files(outbox) - before_mails
    print(
        f"Stripe writes: {writes}, mails written to {outbox}: {mails}"
        + (f"  (failed days: {', '.join(failed)})" if failed else "")
    )
    _list_mails(outbox, before_files)
    return writes + mails


def _list_mails(outbox: str, before: set[str], shown: int = 10) -> None:
    """Where each new mail went: recipient, subject and its .eml file in the outbox."""
    from email import policy
    from email.parser import BytesHeaderParser

    def header(headers, name: str) -> str:
        return " ".join(str(headers.get(name, "?")).split())  # unfolded, decoded

    new = sorted(set(os.listdir(outbox)) - before) if os.path.isdir(outbox) else []
    for name in new[:shown]:
        with open(os.path.join(outbox, name), "rb") as f:
            headers = BytesHeaderParser(policy=policy.default).parse(f)
        print(f"  to {header(headers, 'To')}: {header(headers, 'Subject')}  ({name})")
    if len(new) > shown:
        print(f"  ... and {len(new) - shown} more in {outbox}")


def _count_files(folder: str) -> int:
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


EXAMPLE_SYNC = "crm_customers"
FAILED: list[str] = []  # runs of the demo that failed: the demo says so and exits non-zero


def _run_example_sync(defs, instance, env: dict[str, str], label: str) -> int:
    """Materialize the example sync's asset and print its stored report; the Stripe writes it made."""
    from giftflow.adapters.store import GiftflowStore
    from giftflow.services.sync_runner import format_report

    httpx.post(
        env["STRIPE_API_BASE"] + "/v1/coupons",
        data={"id": "WELCOME10", "percent_off": "10"},
        headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"},
    )  # the coupon the CSV names
    before = _stripe_writes(env)
    result = defs.resolve_job_def(f"sync_{EXAMPLE_SYNC}_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET
    )
    writes = _stripe_writes(env) - before
    print(f"\n{label}")
    runs = GiftflowStore(database_url=Settings.from_env().store_url).sync_runs(EXAMPLE_SYNC, result.run_id)
    print(format_report(EXAMPLE_SYNC, runs[0]) if runs else "  (no report: the run failed before writing one)")
    print(f"Stripe writes: {writes}")
    if not result.success:
        FAILED.append(label)
    return writes


def syncs_report(args: argparse.Namespace) -> int:
    """Print a stored sync-run report: the latest run, or --run."""
    import sqlalchemy as sa

    from giftflow.adapters.store import GiftflowStore
    from giftflow.services.sync_runner import format_report

    url = args.database_url or Settings.from_env().store_url
    source = (
        "--database-url"
        if args.database_url
        else "GIFTFLOW_DATABASE_URL"
        if os.environ.get("GIFTFLOW_DATABASE_URL")
        else "the default under DAGSTER_HOME"
    )
    store = GiftflowStore(database_url=url)
    runs = store.sync_runs(args.sync, args.run, limit=1)
    if not runs:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        print(
            f"no report for sync {args.sync!r}"
            + (f" run {args.run}" if args.run else "")
            + f" in {shown} ({source}); a different database? use --database-url or GIFTFLOW_DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    print(format_report(args.sync, runs[0]))
    return 0


def check(args: argparse.Namespace) -> int:
    """Every setting, the rules and sync files, Cardivo, Stripe and the databases: one line each, exit 1 on a problem."""
    from giftflow.services.checks import failed, run_checks

    checks = run_checks()
    for c in checks:
        print(c.line(), flush=True)
    bad = sum(c.status == "problem" for c in checks)
    print(f"\n{bad} problem(s): fix them before starting the daemon" if bad else "\nall checks passed")
    return 1 if failed(checks) else 0


def demo(args: argparse.Namespace) -> int:
    """Both jobs and the example sync for the last few days against the simulators, then once more: 0 writes."""
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(args.days, 0, -1)]
    home = tempfile.mkdtemp(prefix="giftflow-demo-")
    try:
        return _demo(args, days, home)
    finally:  # the outbox stays, so the mails the demo printed can be opened; the rest only with --keep
        if not args.keep:
            for entry in os.listdir(home):
                if entry != "outbox":
                    path = os.path.join(home, entry)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        outbox = os.path.join(home, "outbox")
        if args.keep:
            print(f"\nDAGSTER_HOME kept: {home} (mails in {outbox})")
        elif os.path.isdir(outbox):
            print(f"\nThe demo's mails are kept in {outbox} (the rest of {home} is removed; --keep keeps it)")
        else:
            os.rmdir(home)


def _demo(args: argparse.Namespace, days: list[date], home: str) -> int:
    import dagster as dg

    with simulators(days, args.seed) as env:
        # The demo configures giftflow the way a deployment does: through the environment Settings reads.
        os.environ.update(env, DAGSTER_HOME=home, GIFTFLOW_SYNC_MODE=args.mode, GIFTFLOW_REFUNDS_ENABLED="true")
        os.environ.setdefault("GIFTFLOW_TEAM_EMAIL", "team@example.com")
        for name in ("GIFTFLOW_SMTP_HOST", "GIFTFLOW_RULES", "GIFTFLOW_DRY_RUN"):
            os.environ.pop(name, None)
        outbox = os.path.join(home, "outbox")
        os.environ.pop("GIFTFLOW_DATABASE_URL", None)
        from giftflow.orchestration.definitions import build_defs

        defs = build_defs()
        with dg.DagsterInstance.ephemeral(tempdir=home) as instance:
            print(
                f"giftflow demo: Cardivo simulator {env['CARDIVO_API_BASE']}, Stripe simulator "
                f"{env['STRIPE_API_BASE']}, DAGSTER_HOME {home}, mode {args.mode}"
            )
            _run_days(defs, instance, days, env, "First run: giftcard_sync per day")
            _run_workflows(
                defs,
                instance,
                days,
                env,
                outbox,
                "Stripe Workflows (stripe_workflows, refunds enabled against the simulator)",
            )
            _run_example_sync(defs, instance, env, "Reverse ETL: sync crm_customers (CSV shipped in the package)")
            again = _run_days(defs, instance, days, env, "Second run of the same days (replay-safe: expect 0 writes)")
            again += _run_workflows(defs, instance, days, env, outbox, "Stripe Workflows again (expect 0 writes, 0 mails)")
            again += _run_example_sync(defs, instance, env, "Reverse ETL: crm_customers again (expect 0 writes)")
    if FAILED:
        print("\nFAILED runs (see the logs above):\n  " + "\n  ".join(FAILED))
        return 1
    print(
        "\n"
        + (
            "OK: the rerun made 0 Stripe writes and sent 0 mails"
            if again == 0
            else f"UNEXPECTED: the rerun made {again} writes or mails"
        )
    )
    return 0 if again == 0 else 1


DEV_INSTANCE = """\
# The Dagster instance of `giftflow dev`: runs, events and schedules in SQLite files under this directory.
# The repo's dagster.yaml (PostgreSQL, run queue limits) is the production instance and is not used here.
"""


def dev(args: argparse.Namespace) -> int:
    """The simulators, the Dagster webserver and the daemon, so the UI can be clicked through with no accounts."""
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(args.days, 0, -1)]
    home = os.path.abspath(args.dagster_home)
    os.makedirs(home, exist_ok=True)
    instance_file = os.path.join(home, "dagster.yaml")
    if not os.path.exists(instance_file):
        with open(instance_file, "w") as f:
            f.write(DEV_INSTANCE)
    with simulators(days, args.seed) as env:
        # Mails go to $DAGSTER_HOME/outbox unless an SMTP server is configured; a team address keeps the
        # workflows' mail_has_recipient check green out of the box.
        child_env = {"GIFTFLOW_TEAM_EMAIL": "team@example.com", **os.environ, **env, "DAGSTER_HOME": home}
        mails = (
            f"SMTP {child_env['GIFTFLOW_SMTP_HOST']}"
            if child_env.get("GIFTFLOW_SMTP_HOST")
            else f"{os.path.join(home, 'outbox')} (.eml files)"
        )
        print(
            f"giftflow dev\n  Cardivo simulator  {env['CARDIVO_API_BASE']}\n"
            f"  Stripe simulator   {env['STRIPE_API_BASE']}\n"
            f"  DAGSTER_HOME       {home}\n  instance           {instance_file} (SQLite under DAGSTER_HOME; the repo's "
            f"production dagster.yaml is not used in dev)\n  team mails         {mails}\n"
            f"  UI                 http://127.0.0.1:{args.port} (Ctrl-C stops everything)",
            flush=True,
        )
        webserver = [sys.executable, "-m", "dagster_webserver", "-m", "giftflow", "-h", "127.0.0.1", "-p", str(args.port)]
        daemon = [_script("dagster-daemon"), "run", "-m", "giftflow"]
        return run_process_group([webserver, daemon], env=child_env)


def _script(name: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else (shutil.which(name) or name)


def run_process_group(commands: list[list[str]], env: dict[str, str], stop_timeout_s: float = 20.0) -> int:
    """Run `commands` in one new process group until one exits or SIGINT/SIGTERM arrives; then stop the whole
    group (their code servers included): SIGTERM, and SIGKILL whatever is left after `stop_timeout_s`."""
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen] = []
    try:
        for cmd in commands:  # the first one leads the group; the others join it
            procs.append(subprocess.Popen(cmd, env=env, process_group=procs[0].pid if procs else 0))
        print(f"  processes          group {procs[0].pid}", flush=True)
        while not received and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        if not received:
            exited = next(p for p in procs if p.poll() is not None)
            print(
                f"giftflow dev: {exited.args!r} exited with {exited.returncode}; stopping the rest",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if procs:
            _stop_group(procs[0].pid, procs, stop_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("giftflow dev: stopped (webserver, daemon, code servers and simulators)", flush=True)
    return 0 if received else 1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, procs: list[subprocess.Popen], timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            p.poll()  # reap our children so the group can empty
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        print(f"giftflow dev: still running after {timeout_s:g} s, killing process group {pgid}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def simulate(args: argparse.Namespace) -> int:
    """One simulator in the foreground on --port."""
    from giftflow_simulators import cardivo, dataset, stripe
    from giftflow_simulators.server import serve_forever

    today = datetime.now(timezone.utc).date()
    world = dataset.build_world(args.seed, [today - timedelta(days=n) for n in range(args.days, -1, -1)])
    if args.system == "cardivo":
        app = cardivo.create_app(
            cardivo.CardivoState.from_world(world),
            args.api_key or DEMO_CARDIVO_KEY,
            latency_s=args.latency,
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            max_page_size=args.page_size,
        )
    else:
        app = stripe.create_app(stripe.StripeState.from_world(world), api_key=args.api_key, rate_limit_per_s=args.rate_limit)
    print(f"{args.system} simulator on http://127.0.0.1:{args.port}", flush=True)
    serve_forever(app, args.port)
    return 0


def webhooks(args: argparse.Namespace) -> int:
    """The webhook receiver in the foreground; secrets, store and body limits from the environment."""
    import uvicorn

    from giftflow.webhooks.app import create_app_from_env

    print(f"giftflow webhooks on http://{args.host}:{args.port}", flush=True)
    # It faces the internet: idle keep-alive connections go after 5 s, at most 100 connections and requests at
    # once (more get 503, which senders retry), headers up to 16 KiB; the app bounds body size and read time.
    uvicorn.run(
        create_app_from_env(),
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=5,
        limit_concurrency=100,
        h11_max_incomplete_event_size=16 * 1024,
        server_header=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="giftflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "check",
        help="check every setting, the rules and sync files, and reach Cardivo, Stripe "
        "and the databases; exit 1 on a problem",
        description=check.__doc__,
    )
    p.set_defaults(func=check)

    p = sub.add_parser(
        "demo",
        help="run both jobs and the example sync for the last days against local simulators, then again: 0 writes",
        description=demo.__doc__,
    )
    p.add_argument("--days", type=int, default=3, help="how many past days to sync")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--mode", choices=["update", "upsert"], default="update")
    p.add_argument("--keep", action="store_true", help="keep the demo's DAGSTER_HOME (the outbox is always kept)")
    p.set_defaults(func=demo)

    p = sub.add_parser(
        "dev",
        help="the Dagster UI and daemon on the simulators, with a dev instance (Ctrl-C stops all)",
        description=dev.__doc__,
    )
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--dagster-home", default=".dagster_home")
    p.set_defaults(func=dev)

    p = sub.add_parser(
        "simulate", help="serve the Cardivo or the Stripe simulator in the foreground", description=simulate.__doc__
    )
    p.add_argument("system", choices=["cardivo", "stripe"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--api-key", default=None, help="key the simulator accepts (Stripe: any key when unset)")
    p.add_argument("--latency", type=float, default=0.0, help="Cardivo: seconds added to each answer")
    p.add_argument("--error-rate", type=float, default=0.0, help="Cardivo: share of 5xx answers")
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="Cardivo: share of 429 answers")
    p.add_argument("--page-size", type=int, default=100, help="Cardivo: largest page served")
    p.add_argument("--rate-limit", type=float, default=None, help="Stripe: requests/s before 429s")
    p.set_defaults(func=simulate)

    p = sub.add_parser(
        "webhooks",
        help="serve the Cardivo and Stripe webhook receivers (stores events for the sensors)",
        description=webhooks.__doc__,
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=webhooks)

    p = sub.add_parser("syncs", help="reports of reverse-ETL sync runs", description="Reverse-ETL syncs to Stripe.")
    syncs_sub = p.add_subparsers(dest="syncs_command", required=True)
    r = syncs_sub.add_parser(
        "report", help="print a sync run's stored report (default: the latest run)", description=syncs_report.__doc__
    )
    r.add_argument("sync", help="the sync's name (its file's `name`; `giftcard` for the gift-card sync)")
    r.add_argument("--run", default=None, help="a Dagster run id")
    r.add_argument("--database-url", default=None, help="giftflow's store (default: GIFTFLOW_DATABASE_URL)")
    r.set_defaults(func=syncs_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad variable: its name, value and the allowed values, not a traceback
        print(f"giftflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
