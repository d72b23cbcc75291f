"""`giftflow` command line: demo, dev, simulate."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
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
    with BackgroundServer(cardivo.create_app(cardivo_state, DEMO_CARDIVO_KEY)) as cardivo_srv, \
            BackgroundServer(stripe.create_app(stripe_state, api_key=DEMO_STRIPE_KEY,
                                               rate_limit_per_s=stripe_rps)) as stripe_srv:
        yield {"CARDIVO_API_BASE": cardivo_srv.base_url, "CARDIVO_API_KEY": DEMO_CARDIVO_KEY,
               "STRIPE_API_BASE": stripe_srv.base_url, "STRIPE_API_KEY": DEMO_STRIPE_KEY}


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
    print(f"{'day':<12}{'redemptions':>12}{'quarantined':>12}{'updated':>9}{'created':>9}{'unchanged':>10}"
          f"{'left out':>9}{'Stripe writes':>14}  why left out")
    total = 0
    for day in days:
        before = _stripe_writes(env)
        result = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False,
                                        run_config=QUIET)
        writes = _stripe_writes(env) - before
        total += writes
        fetched = _metadata(result, "cardivo_redemptions")
        plan = _metadata(result, "giftcard_customer_plan")
        applied = _metadata(result, "giftcard_customer_updates")
        why = ", ".join(f"{k.removeprefix('left_out_')} {v}" for k, v in sorted(plan.items())
                        if k.startswith("left_out_")) or "-"
        status = "" if result.success else "  (run failed: see the Dagster UI)"
        if not result.success:
            FAILED.append(f"{label}: {day.isoformat()}")
        print(f"{day.isoformat():<12}{fetched.get('valid', 0):>12}{fetched.get('quarantined', 0):>12}"
              f"{applied.get('updated', applied.get('would_update', 0)):>9}"
              f"{applied.get('created', applied.get('would_create', 0)):>9}"
              f"{applied.get('unchanged', 0):>10}{applied.get('left_out', 0):>9}{writes:>14}  {why}{status}")
    print(f"Stripe writes in total: {total}")
    return total


# The README's vocabulary (giftflow/domain/rules.py, services/workflow_actions.py); others that occur are appended.
OUTCOMES = ("matched", "mailed", "tagged", "refunded", "escalated", "would_refund", "unchanged", "done_before",
            "not_applicable")


def _run_workflows(defs, instance, days: list[date], env: dict[str, str], outbox: str, label: str) -> int:
    job = defs.resolve_job_def("stripe_workflows")
    before_writes, before_mails = _stripe_writes(env), _count_files(outbox)
    totals: dict[str, dict[str, int]] = {}
    failed = []
    for day in days:
        result = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False,
                                        run_config=QUIET)
        failed += [] if result.success else [day.isoformat()]
        if not result.success:
            FAILED.append(f"{label}: {day.isoformat()}")
        for rule, counts in (_metadata(result, "workflow_actions").get("per_rule_counts") or {}).items():
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
    print(f"Stripe writes: {writes}, mails written to {outbox}: {mails}" +
          (f"  (failed days: {', '.join(failed)})" if failed else ""))
    return writes + mails


def _count_files(folder: str) -> int:
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


EXAMPLE_SYNC = "crm_customers"
FAILED: list[str] = []  # runs of the demo that failed: the demo says so and exits non-zero


def _run_example_sync(defs, instance, env: dict[str, str], label: str) -> int:
    """Materialize the example sync's asset and print its stored report; the Stripe writes it made."""
    from giftflow.adapters.store import GiftflowStore
    from giftflow.services.sync_runner import format_report

    httpx.post(env["STRIPE_API_BASE"] + "/v1/coupons", data={"id": "WELCOME10", "percent_off": "10"},
               headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"})  # the coupon the CSV names
    before = _stripe_writes(env)
    result = defs.resolve_job_def(f"sync_{EXAMPLE_SYNC}_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET)
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
    from giftflow.adapters.store import GiftflowStore
    from giftflow.services.sync_runner import format_report

    store = GiftflowStore(database_url=args.database_url or Settings.from_env().store_url)
    runs = store.sync_runs(args.sync, args.run, limit=1)
    if not runs:
        print(f"no report for sync {args.sync!r}" + (f" run {args.run}" if args.run else ""), file=sys.stderr)
        return 1
    print(format_report(args.sync, runs[0]))
    return 0


def demo(args: argparse.Namespace) -> int:
    """Run giftcard_sync for the last few days against the simulators, then once more: 0 writes."""
    import dagster as dg

    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(args.days, 0, -1)]
    with tempfile.TemporaryDirectory(prefix="giftflow-demo-") as home, simulators(days, args.seed) as env:
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
            print(f"giftflow demo: Cardivo simulator {env['CARDIVO_API_BASE']}, Stripe simulator "
                  f"{env['STRIPE_API_BASE']}, DAGSTER_HOME {home}, mode {args.mode}")
            _run_days(defs, instance, days, env, "First run: giftcard_sync per day")
            _run_workflows(defs, instance, days, env, outbox,
                           "Stripe Workflows (stripe_workflows, refunds enabled against the simulator)")
            _run_example_sync(defs, instance, env, "Reverse ETL: sync crm_customers (CSV shipped in the package)")
            again = _run_days(defs, instance, days, env, "Second run of the same days (replay-safe: expect 0 writes)")
            again += _run_workflows(defs, instance, days, env, outbox, "Stripe Workflows again (expect 0 writes, 0 mails)")
            again += _run_example_sync(defs, instance, env, "Reverse ETL: crm_customers again (expect 0 writes)")
    if FAILED:
        print("\nFAILED runs (see the logs above):\n  " + "\n  ".join(FAILED))
        return 1
    print("\n" + ("OK: the rerun made 0 Stripe writes and sent 0 mails" if again == 0
                  else f"UNEXPECTED: the rerun made {again} writes or mails"))
    return 0 if again == 0 else 1


def dev(args: argparse.Namespace) -> int:
    """The simulators plus `dagster dev`, so the UI can be clicked through with no accounts."""
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(args.days, 0, -1)]
    home = os.path.abspath(args.dagster_home)
    os.makedirs(home, exist_ok=True)
    with simulators(days, args.seed) as env:
        print(f"Cardivo simulator {env['CARDIVO_API_BASE']}, Stripe simulator {env['STRIPE_API_BASE']}")
        # Mails go to $DAGSTER_HOME/outbox unless an SMTP server is configured; a team address keeps the
        # workflows' mail_has_recipient check green out of the box.
        child_env = {"GIFTFLOW_TEAM_EMAIL": "team@example.com", **os.environ, **env, "DAGSTER_HOME": home}
        cmd = [sys.executable, "-m", "dagster", "dev", "-m", "giftflow", "-p", str(args.port)]
        with contextlib.suppress(KeyboardInterrupt):
            return subprocess.call(cmd, env=child_env)
    return 0


def simulate(args: argparse.Namespace) -> int:
    """One simulator in the foreground on --port."""
    from giftflow_simulators import cardivo, dataset, stripe
    from giftflow_simulators.server import serve_forever

    today = datetime.now(timezone.utc).date()
    world = dataset.build_world(args.seed, [today - timedelta(days=n) for n in range(args.days, -1, -1)])
    if args.system == "cardivo":
        app = cardivo.create_app(cardivo.CardivoState.from_world(world), args.api_key or DEMO_CARDIVO_KEY,
                                 latency_s=args.latency, error_rate=args.error_rate,
                                 rate_limit_rate=args.rate_limit_rate, max_page_size=args.page_size)
    else:
        app = stripe.create_app(stripe.StripeState.from_world(world), api_key=args.api_key,
                                rate_limit_per_s=args.rate_limit)
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
    uvicorn.run(create_app_from_env(), host=args.host, port=args.port, log_level="warning", lifespan="off",
                timeout_keep_alive=5, limit_concurrency=100, h11_max_incomplete_event_size=16 * 1024,
                server_header=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="giftflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the gift-card sync once against local simulators")
    p.add_argument("--days", type=int, default=3, help="how many past days to sync")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--mode", choices=["update", "upsert"], default="update")
    p.set_defaults(func=demo)

    p = sub.add_parser("dev", help="simulators plus `dagster dev`")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--dagster-home", default=".dagster_home")
    p.set_defaults(func=dev)

    p = sub.add_parser("simulate", help="serve one simulator")
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

    p = sub.add_parser("webhooks", help="serve the Cardivo/Stripe webhook receiver")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=webhooks)

    p = sub.add_parser("syncs", help="reverse-ETL syncs to Stripe customers")
    syncs_sub = p.add_subparsers(dest="syncs_command", required=True)
    r = syncs_sub.add_parser("report", help="print a sync-run report (default: the latest run)")
    r.add_argument("sync", help="the sync's name (its file's `name`)")
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
