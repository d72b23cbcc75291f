"""A chaos run over many seeds: giftflow against simulators that fail, throttle, lose answers and get killed.

For each seed: a small seeded world (`build_world`), the Cardivo simulator with random 5xx/429 and the Stripe
simulator with random 429/5xx, slow answers and answers lost after the write, all drawn from the seed; a fresh
DAGSTER_HOME (SQLite Dagster storage and giftflow's SQLite store), upsert mode, refunds enabled, team mails to the
outbox, and a small partitioned reverse-ETL sync file written to a temporary GIFTFLOW_SYNCS_DIR. Then, day by day,
`giftcard_sync`, `stripe_workflows` and `sync_chaos_crm_job` run in a worker subprocess (`giftflow.defs`, in
process); at least once per seed the worker is SIGKILLed while the Stripe simulator is seeing the run's writes, and
a step that failed or was killed is rerun (at most 8 reruns) before the next one starts.

Afterwards the Stripe simulator's state and the mails are compared with an oracle computed here from the inputs
and the contract alone (no giftflow code): per customer the five gift-card keys, one customer per identity,
Tier=VIP, one refund per small fraud warning, one mail per large order and per other warning, the sync's fields.

    python bench/chaos.py --seeds 20 [--first-seed 1] [--days 2] [-v]

Prints per seed and in total: duplicates, lost updates (anything not as the oracle says) and failed seeds;
exits 1 unless all three are 0.
"""

from __future__ import annotations

import argparse
import csv
import email
import email.policy
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the checkout's giftflow, also when run as `python bench/chaos.py`

CARDIVO_KEY, STRIPE_KEY, TEAM = "cardivo_chaos_key", "sk_test_giftflow_chaos", "team@example.com"
MAX_RERUNS = 8
STEP_TIMEOUT_S = 180  # a step still running after this is taken as hung: killed and rerun like a failed one
SYNC_NAME = "chaos_crm"
JOBS = ("giftcard_sync", "stripe_workflows", f"sync_{SYNC_NAME}_job")
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
GIFTCARD_KEYS = (
    "giftcard_redeemed_total",
    "giftcard_currency",
    "giftcard_redemptions",
    "giftcard_last_redeemed_at",
    "giftcard_last4",
)
SYNC_FILE = f"""version: 1
name: {SYNC_NAME}
description: chaos bench, a CRM export per day
source: {{csv: "crm/{{partition}}.csv"}}
mode: upsert
identifier: email
primary_key: crm_id
empty_values: leave
schedule: "0 6 * * *"
partitions: daily
mapping:
  email: email
  name: full_name
  metadata: {{columns: {{crm_id: crm_id, crm_segment: segment, crm_score: score}}}}
"""


# -- the worker: runs steps in process, in a subprocess the bench may kill ---------------------------------------------
def worker(steps: list[list]) -> int:
    import dagster as dg

    import giftflow

    with dg.DagsterInstance.get() as instance:
        for index, job, day in steps:
            print(f"START {index}", flush=True)
            try:
                result = giftflow.defs.get_job_def(job).execute_in_process(
                    partition_key=day, instance=instance, raise_on_error=False, run_config=QUIET
                )
                ok = result.success
            except Exception as exc:  # noqa: BLE001 - reported, the bench reruns the step
                print(f"ERROR {index} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                ok = False
            print(f"END {index} {'ok' if ok else 'failed'}", flush=True)
            if not ok:
                return 1
    return 0


# -- the oracle: from the inputs and the contract, no giftflow code ------------------------------------------------------
def norm(address: str | None) -> str | None:
    return address.strip().lower() if address and address.strip() else None


def day_of(unix: int) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).date().isoformat()


@dataclass
class Oracle:
    customers: dict[str, dict] = field(default_factory=dict)  # target -> wanted metadata/name (subset)
    identities: Counter = field(default_factory=Counter)  # normalised e-mail -> customers expected with it
    new_targets: dict[str, str] = field(default_factory=dict)  # target "new:<email>" -> normalised e-mail
    vip: set = field(default_factory=set)
    refunds: dict[str, int] = field(default_factory=dict)  # charge -> refund amount
    mails: set = field(default_factory=set)  # object ids (pi_..., ch_...)


def oracle(world, days: list[str], crm: dict[str, list[dict]]) -> Oracle:
    o = Oracle()
    newest: dict[str, dict] = {}
    ids = {c["id"] for c in world.customers}
    for c in world.customers:
        key = norm(c["email"])
        o.identities[key] += 1
        if key and (key not in newest or c["created"] > newest[key]["created"]):
            newest[key] = c

    def target(r: dict) -> str | None:
        if r.get("stripe_customer_id") in ids:
            return r["stripe_customer_id"]
        key = norm((r.get("customer") or {}).get("email"))
        if key is None:
            return None
        if key in newest:
            return newest[key]["id"]
        o.new_targets[f"new:{key}"] = key
        return f"new:{key}"

    # gift-card sync, day by day: day D writes every customer with a redemption redeemed on D, from all seen so far
    seen: list[tuple[str, dict]] = []
    giftcard: dict[str, dict] = {}
    created: set[str] = set()
    for day in days:
        today = [(target(r), r) for r in world.redemptions if r["redeemed_at"][:10] == day]
        seen += [(t, r) for t, r in today if t]
        for t in {t for t, _ in today if t}:
            mine = [r for u, r in seen if u == t]
            done = [r for r in mine if r["status"] == "completed"]
            if len({r["currency"] for r in done}) > 1:
                continue  # multi_currency: reported, not written (earlier values stay)
            if t.startswith("new:") and t not in created:
                if not done:
                    continue  # nothing completed yet: no customer is created for it (left out, unmatched)
                created.add(t)
            if not done:
                giftcard[t] = {"giftcard_redeemed_total": "0", "giftcard_redemptions": "0"}
                continue
            last = max(done, key=lambda r: r["redeemed_at"])
            giftcard[t] = {
                "giftcard_redeemed_total": str(sum(r["amount"] for r in done)),
                "giftcard_currency": done[0]["currency"],
                "giftcard_redemptions": str(len(done)),
                "giftcard_last_redeemed_at": last["redeemed_at"],
                "giftcard_last4": last["gift_card"]["code"][-4:],
            }
    for t in list(o.new_targets):
        if t not in giftcard:  # never written (multi-currency): not created
            del o.new_targets[t]
    for t, wanted in giftcard.items():
        o.customers.setdefault(t, {})["giftcard"] = wanted
    for t, key in o.new_targets.items():
        o.identities[key] += 1

    # reverse-ETL sync: upsert by e-mail, each day's file in turn; the last non-empty value of a field wins
    for day in days:
        for row in crm.get(day, []):
            key = norm(row["email"])
            t = newest[key]["id"] if key in newest else f"crm:{key}"
            if t.startswith("crm:") and t not in o.new_targets:
                o.new_targets[t] = key
                o.identities[key] += 1
            o.customers.setdefault(t, {})["crm"] = {
                "name": row["full_name"],
                "crm_id": row["crm_id"],
                "crm_segment": row["segment"],
                "crm_score": row["score"],
            }

    # Stripe workflows, per day of the object's `created`
    run_days = set(days)
    for pi in world.payment_intents:
        if day_of(pi["created"]) in run_days and pi["status"] == "succeeded" and pi["currency"] == "usd":
            if pi["amount"] > 100000:
                o.mails.add(pi["id"])
            if pi["amount"] > 200000 and pi["customer"]:
                o.vip.add(pi["customer"])
    charges = {c["id"]: c for c in world.charges}
    for w in world.early_fraud_warnings:
        if day_of(w["created"]) not in run_days:
            continue
        c = charges[w["charge"]]
        unrefunded = c["amount"] - c["amount_refunded"]
        if unrefunded <= 0:
            continue  # fully refunded: nothing
        if c["currency"] == "usd" and not c["disputed"] and unrefunded < 1500:
            o.refunds[c["id"]] = unrefunded
        else:
            o.mails.add(c["id"])
    return o


def crm_files(world, days: list[str], rng: random.Random) -> dict[str, list[dict]]:
    """Each day's CRM export: some existing Stripe customers with new values, some new people, a new person of
    an earlier day again with changed values."""
    emails = sorted({norm(c["email"]): c["email"] for c in world.customers}.values())  # one per identity
    files: dict[str, list[dict]] = {}
    news: list[dict] = []
    for n, day in enumerate(days):
        rows = []
        for address in rng.sample(emails, min(5, len(emails))):
            rows.append({"crm_id": f"W{emails.index(address)}", "email": address})
        for _ in range(2):
            news.append({"crm_id": f"N{len(news)}", "email": f"crm.{world.seed}.{len(news)}@crm.example.com"})
            rows.append(dict(news[-1]))
        if n and news[:-2]:
            rows.append(dict(rng.choice(news[:-2])))
        for row in rows:
            row.update(
                full_name=f"CRM Person {row['crm_id']} d{n}",
                segment=rng.choice(["retail", "wholesale", "vip"]),
                score=str(rng.randint(0, 100)),
            )
        files[day] = rows
    return files


def compare(o: Oracle, world, stripe_state, mails: dict[str, int]) -> tuple[Counter, Counter, list[str]]:
    """(duplicates, lost, notes): counts per kind of what Stripe and the outbox hold against the oracle."""
    dup, lost, notes = Counter(), Counter(), []
    live = stripe_state.customers()
    by_email: dict[str, list[dict]] = defaultdict(list)
    for c in live:
        by_email[norm(c.get("email")) or ""].append(c)
    by_id = {c["id"]: c for c in live}
    for key, n in o.identities.items():
        have = len(by_email.get(key or "", []))
        if have > n:
            dup["customers"] += have - n
            notes.append(f"duplicate customer: {have} customers for {key} (expected {n})")
        elif have < n:
            lost["customers"] += n - have
            notes.append(f"missing customer for {key}")
    world_ids = {c["id"] for c in world.customers}
    extra = [c for c in live if c["id"] not in world_ids and norm(c.get("email")) not in o.identities]
    for c in extra:
        lost["fields"] += 1
        notes.append(f"unexpected customer {c['id']} <{c.get('email')}>")

    def resolve(t: str) -> dict | None:
        if t in by_id:
            return by_id[t]
        key = o.new_targets.get(t)
        found = [c for c in by_email.get(key or "", []) if c["id"] not in world_ids]
        return max(found, key=lambda c: c["created"]) if found else None

    checked = set()
    for t, wanted in o.customers.items():
        c = resolve(t)
        if c is None:
            continue  # counted as a missing customer above
        checked.add(c["id"])
        md = c.get("metadata") or {}
        want_gc = wanted.get("giftcard", {})
        for k in GIFTCARD_KEYS:
            if md.get(k) != want_gc.get(k):
                lost["fields"] += 1
                notes.append(f"{c['id']} {k}: {md.get(k)!r}, oracle {want_gc.get(k)!r}")
        if "crm" in wanted:
            crm = wanted["crm"]
            for k, got in (("name", c.get("name")), *((k, md.get(k)) for k in ("crm_id", "crm_segment", "crm_score"))):
                if got != crm[k]:
                    lost["fields"] += 1
                    notes.append(f"{c['id']} {k}: {got!r}, oracle {crm[k]!r}")
    for c in live:  # customers the oracle wants nothing of keep no gift-card or CRM keys
        if c["id"] not in checked:
            md = c.get("metadata") or {}
            for k in (*GIFTCARD_KEYS, "crm_segment", "crm_score"):
                if k in md:
                    lost["fields"] += 1
                    notes.append(f"{c['id']} has {k}={md[k]!r}, oracle: none")
    for c in live:
        tagged = (c.get("metadata") or {}).get("Tier") == "VIP"
        if tagged != (c["id"] in o.vip):
            lost["vip_tags"] += 1
            notes.append(f"{c['id']} Tier=VIP {'set' if tagged else 'missing'}, oracle {c['id'] in o.vip}")
    world_refunds = {r["id"] for ch in world.charges for r in ch["refunds"]["data"]}
    made: dict[str, list[dict]] = defaultdict(list)
    for r in stripe_state.objects("refund"):
        if r["id"] not in world_refunds:
            made[r["charge"]].append(r)
    for charge, refunds in made.items():
        if len(refunds) > 1:
            dup["refunds"] += len(refunds) - 1
            notes.append(f"{len(refunds)} refunds of charge {charge}")
        if charge not in o.refunds:
            lost["refunds"] += 1
            notes.append(f"refund of charge {charge}: oracle none")
        elif refunds[0]["amount"] != o.refunds[charge]:
            lost["refunds"] += 1
            notes.append(f"refund of charge {charge}: {refunds[0]['amount']}, oracle {o.refunds[charge]}")
    for charge in o.refunds.keys() - made.keys():
        lost["refunds"] += 1
        notes.append(f"missing refund of charge {charge}")
    for obj, n in mails.items():
        if n > 1:
            dup["mails"] += n - 1
            notes.append(f"{n} mails about {obj}")
        if obj not in o.mails:
            lost["mails"] += 1
            notes.append(f"mail about {obj}: oracle none")
    for obj in o.mails - mails.keys():
        lost["mails"] += 1
        notes.append(f"missing mail about {obj}")
    return dup, lost, notes


# -- the outbox: every mail written, rewrites included ----------------------------------------------------------------
class Outbox:
    """Counts every .eml file closed after a write in the outbox (inotify through watchdog), so a mail sent twice
    under the same name is seen twice."""

    def __init__(self, folder: Path):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self.folder, self.writes = folder, Counter()
        folder.mkdir(parents=True, exist_ok=True)
        outbox = self

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):
                if not event.is_directory and str(event.src_path).endswith(".eml"):
                    outbox.writes[os.path.basename(event.src_path)] += 1

        self.observer = Observer()
        self.observer.schedule(Handler(), str(folder))
        self.observer.start()

    def stop(self) -> None:
        time.sleep(0.2)  # let the last events arrive
        self.observer.stop()
        self.observer.join(5)

    def per_object(self) -> dict[str, int]:
        """Mails sent per Stripe object named in the subject (pi_... or ch_...)."""
        counts: Counter = Counter()
        for path in sorted(self.folder.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            found = re.findall(r"\b(?:pi|ch)_[A-Za-z0-9]+", str(msg["subject"] or ""))
            counts[found[0] if found else f"(no object) {path.name}"] += max(1, self.writes.get(path.name, 1))
        return counts


# -- one seed ------------------------------------------------------------------------------------------------------
@dataclass
class SeedResult:
    seed: int
    duplicates: int = 0
    lost: int = 0
    failed: bool = False
    kills: int = 0
    reruns: int = 0
    seconds: float = 0.0
    faults: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    events: list = field(default_factory=list)  # kills, failed steps


def run_seed(seed: int, n_days: int, verbose: bool = False) -> SeedResult:
    from giftflow_simulators import cardivo, dataset, stripe
    from giftflow_simulators.server import BackgroundServer

    started = time.monotonic()
    rng = random.Random(f"giftflow-chaos-{seed}")
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(n_days + 1, 1, -1)]
    day_keys = [d.isoformat() for d in days]
    world = dataset.build_world(seed, days, redemptions_per_day=18, customers=20, payments_per_day=10)
    crm = crm_files(world, day_keys, rng)
    expected = oracle(world, day_keys, crm)
    cardivo_faults = dict(
        error_rate=rng.uniform(0, 0.15), rate_limit_rate=rng.uniform(0, 0.15), retry_after_s=rng.choice([0, 0, 1])
    )
    stripe_faults = dict(
        rate_limit_rate=rng.uniform(0, 0.06),
        error_rate=rng.uniform(0, 0.06),
        lose_rate=rng.uniform(0, 0.15),
        slow_rate=rng.uniform(0, 0.05),
        slow_s=rng.uniform(0.1, 1.0),
        rate_limit_per_s=rng.choice([None, 30, 60]),
    )
    result = SeedResult(
        seed,
        faults={
            "cardivo": cardivo_faults,
            "stripe": stripe_faults,
            "oracle": {
                "customers": len(expected.customers),
                "new_customers": len(expected.new_targets),
                "vip": len(expected.vip),
                "refunds": len(expected.refunds),
                "mails": len(expected.mails),
            },
        },
    )
    stripe_state = stripe.StripeState.from_world(world, seed=seed)
    cardivo_state = cardivo.CardivoState.from_world(world)
    steps = [(job, day) for day in day_keys for job in JOBS]
    # where to kill: the first gift-card run (it always writes), and one more step of the seed's choosing
    kill_at = {0: rng.randint(1, 6), rng.randrange(1, len(steps)): rng.randint(1, 3)}
    if rng.random() < 0.5:  # and sometimes lose the next answers right away, whatever they are
        stripe_state.lose_next_responses(rng.randint(1, 3))
    with (
        tempfile.TemporaryDirectory(prefix=f"giftflow-chaos-{seed}-") as tmp,
        BackgroundServer(cardivo.create_app(cardivo_state, CARDIVO_KEY, seed=seed, **cardivo_faults)) as csrv,
        BackgroundServer(stripe.create_app(stripe_state, api_key=STRIPE_KEY, seed=seed, **stripe_faults)) as ssrv,
    ):
        home, syncs = Path(tmp, "dagster_home"), Path(tmp, "syncs")
        (syncs / "crm").mkdir(parents=True)
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # SQLite storage, no telemetry
        (syncs / f"{SYNC_NAME}.yaml").write_text(SYNC_FILE)
        for day, rows in crm.items():
            with open(syncs / "crm" / f"{day}.csv", "w", newline="") as f:
                out = csv.DictWriter(f, ["crm_id", "email", "full_name", "segment", "score"])
                out.writeheader()
                out.writerows(rows)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTFLOW_", "DAGSTER_", "STRIPE_", "CARDIVO_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            DAGSTER_HOME=str(home),
            CARDIVO_API_BASE=csrv.base_url,
            CARDIVO_API_KEY=CARDIVO_KEY,
            STRIPE_API_BASE=ssrv.base_url,
            STRIPE_API_KEY=STRIPE_KEY,
            GIFTFLOW_SYNC_MODE="upsert",
            GIFTFLOW_REFUNDS_ENABLED="true",
            GIFTFLOW_TEAM_EMAIL=TEAM,
            GIFTFLOW_SYNCS_DIR=str(syncs),
            GIFTFLOW_STRIPE_MAX_RPS="50",
        )
        outbox = Outbox(home / "outbox")
        log = open(Path(tmp, "worker.log"), "w")
        try:
            pos, attempts = 0, Counter()
            while pos < len(steps) and not result.failed:
                pos = _run_worker(steps, pos, attempts, kill_at, stripe_state, env, log, result)
                if pos < len(steps) and attempts[pos] > MAX_RERUNS:
                    result.failed = True
                    result.notes.append(f"{steps[pos][0]} {steps[pos][1]}: no success after {MAX_RERUNS} reruns")
        finally:
            log.close()
            outbox.stop()
        if result.failed and verbose:
            print(Path(tmp, "worker.log").read_text()[-4000:], file=sys.stderr)
        dup, lost, notes = compare(expected, world, stripe_state, outbox.per_object())
    result.duplicates, result.lost = sum(dup.values()), sum(lost.values())
    result.notes += notes
    result.failed = result.failed or bool(result.duplicates or result.lost)
    stats = stripe_state.stats()
    result.faults["seen"] = {
        k: stats[k]
        for k in ("writes", "replays", "rate_limited", "injected_429", "injected_5xx", "lost_answers", "slow_answers")
    }
    result.faults["seen"]["cardivo_refused"] = sum(cardivo_state.stats()["refused"].values())
    result.seconds = time.monotonic() - started
    return result


def _run_worker(steps, pos, attempts, kill_at, stripe_state, env, log, result) -> int:
    """One worker from step `pos` on; kills it where planned. Returns the first step not done."""
    todo = [[i, job, day] for i, (job, day) in enumerate(steps) if i >= pos]
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(todo)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and None, daemon=True).start()
    current, base, since = None, 0, time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=0.003)
            except queue.Empty:
                line = None
            if line:
                kind, index, *rest = line.split()
                index = int(index)
                if kind == "START":
                    current, base, since = index, stripe_state.stats()["writes"], time.monotonic()
                elif kind == "END" and rest == ["ok"]:
                    pos, current = index + 1, None
                elif kind == "END":
                    attempts[index] += 1
                    result.events.append(f"{steps[index]} failed")
                    result.reruns += 1
                    return pos
            elif proc.poll() is not None and lines.empty():
                if pos >= len(steps):
                    return pos  # all done
                attempts[pos if current is None else current] += 1  # died without a word (e.g. at import)
                result.events.append(f"worker died in {steps[pos if current is None else current]}")
                result.reruns += 1
                return pos
            if time.monotonic() - since > STEP_TIMEOUT_S:
                os.killpg(proc.pid, signal.SIGKILL)
                step = pos if current is None else current
                attempts[step] += 1
                result.reruns += 1
                result.events.append(f"{steps[step]} hung for {STEP_TIMEOUT_S} s: killed")
                return pos
            if current in kill_at and stripe_state.stats()["writes"] - base >= kill_at[current]:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call created: the worker and nothing else
                result.events.append(f"{steps[current]} killed after {stripe_state.stats()['writes'] - base} writes")
                del kill_at[current]
                result.kills += 1
                result.reruns += 1
                attempts[current] += 1
                return pos
    finally:
        if proc.poll() is None:
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=2, help="UTC days per world")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each finding and the faults drawn")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))

    started = time.monotonic()
    print(
        f"{'seed':>6}{'duplicates':>12}{'lost':>6}{'failed':>8}{'kills':>7}{'reruns':>8}{'writes':>8}"
        f"{'stripe faults':>15}{'cardivo faults':>16}{'s':>7}"
    )
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run_seed(seed, args.days, args.verbose)
        results.append(r)
        seen = r.faults["seen"]
        stripe_faults = (
            seen["rate_limited"] + seen["injected_429"] + seen["injected_5xx"] + seen["lost_answers"] + seen["slow_answers"]
        )
        print(
            f"{seed:>6}{r.duplicates:>12}{r.lost:>6}{'yes' if r.failed else 'no':>8}{r.kills:>7}{r.reruns:>8}"
            f"{seen['writes']:>8}{stripe_faults:>15}{seen['cardivo_refused']:>16}{r.seconds:>7.1f}",
            flush=True,
        )
        for note in r.notes[:20] if (args.verbose or r.failed) else []:
            print(f"        {note}")
        if args.verbose:
            print(f"        events: {'; '.join(r.events)}")
            print(f"        faults: {r.faults}")
    dups, lost, failed = (sum(r.duplicates for r in results), sum(r.lost for r in results), sum(r.failed for r in results))
    print(
        f"total over {len(results)} seeds: duplicates {dups}, lost updates {lost}, failed seeds {failed} "
        f"({', '.join(str(r.seed) for r in results if r.failed) or 'none'}); kills {sum(r.kills for r in results)}, "
        f"reruns {sum(r.reruns for r in results)}; {time.monotonic() - started:.1f} s"
    )
    return 1 if dups or lost or failed else 0


if __name__ == "__main__":
    sys.exit(main())
