"""The stripe_workflows job through Dagster against the Stripe simulator, with a real SMTP server on loopback.

Expected outcomes come from a plain reading of the contract's table (`expected_outcomes`), not from giftflow's
rule engine.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timezone
from email import message_from_bytes, policy

import dagster as dg
import pytest
from aiosmtpd.controller import Controller

from giftflow.cli import per_rule_counts
from giftflow_tests.conftest import QUIET, ROOT, free_port

DAYS = [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)]
TEAM = "team@shop.example"


class Inbox:
    """aiosmtpd handler that keeps every message; `delay_s` slows each mail's envelope (before its content
    is sent) so a test can kill the sender while mails are going out."""

    def __init__(self, delay_s: float = 0.0):
        self.messages, self.delay_s, self.lock = [], delay_s, threading.Lock()
        self.refused: set[str] = set()  # recipients answered 550
        self.port = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(self.delay_s)
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"

    def keys(self):
        with self.lock:
            return [m["X-Giftflow-Key"] for _, m in self.messages]


@pytest.fixture
def inbox():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


@pytest.fixture
def giftflow(giftflow, inbox):
    """giftflow mailing the team through the SMTP server on loopback."""
    return giftflow.but(
        team_email=TEAM, smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_starttls=False, mail_from="giftflow@shop.example"
    )


def run(giftflow, days, instance, **settings):
    return giftflow.but(**settings).run("stripe_workflows", days, instance, run_config=QUIET)


def expected_outcomes(state, day=None):
    """The contract's table over the simulator's objects as they are before any run (objects created on
    `day` only, where given). Mails are named by the payment intent or the warned charge."""

    def on_day(obj):
        return day is None or datetime.fromtimestamp(obj["created"], timezone.utc).date() == day

    mails, vip, refunds = set(), set(), {}
    for pi in filter(on_day, state.objects("payment_intent")):
        if pi["status"] == "succeeded" and pi["currency"] == "usd" and pi["amount"] > 100000:
            mails.add(pi["id"])
            if pi["amount"] > 200000 and pi["customer"]:
                vip.add(pi["customer"])
    for w in filter(on_day, state.objects("radar.early_fraud_warning")):
        ch = state.retrieve("charge", w["charge"])
        rest = ch["amount"] - ch["amount_refunded"]
        if ch["refunded"] or rest <= 0:
            continue
        if ch["currency"] == "usd" and not ch["disputed"] and rest < 1500:
            refunds[ch["id"]] = rest
        else:
            mails.add(ch["id"])
    return mails, vip, refunds


def giftflow_refunds(state):
    return [r for r in state.objects("refund") if (r.get("metadata") or {}).get("giftflow_key")]


@pytest.mark.e2e  # ~4 s
def test_workflows_end_to_end_with_refunds_mails_and_tags(sims, inbox, giftflow):
    state = sims.stripe_state
    mail_about, vip, refunds = expected_outcomes(state)
    assert mail_about and vip and refunds
    instance = dg.DagsterInstance.ephemeral()
    results = run(giftflow, DAYS, instance, refunds_enabled=True)
    assert all(r.success for r in results)
    assert all(ev.passed for r in results for ev in r.get_asset_check_evaluations())

    # Mails: one per payment intent or warning, each naming its object, to the team, from the configured sender.
    assert len(inbox.messages) == len(mail_about) and len(set(inbox.keys())) == len(mail_about)
    for rcpt, msg in inbox.messages:
        assert rcpt == [TEAM] and msg["From"] == "giftflow@shop.example"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        named = [o for o in mail_about if o in text]
        assert len(named) == 1 and "https://dashboard.stripe.com/payments/" + named[0] in html
        if named[0].startswith("pi_"):
            pi = state.retrieve("payment_intent", named[0])
            assert f"{pi['amount'] / 100:,.2f} USD" in text and (pi["customer"] or "(none)") in text

    # Refunds: exactly the unrefunded amount, reason fraudulent, linked to the warning.
    made = giftflow_refunds(state)
    assert {r["charge"]: r["amount"] for r in made} == refunds
    assert all(r["reason"] == "fraudulent" and r["metadata"]["early_fraud_warning"].startswith("issfr_") for r in made)

    # VIP: tagged, other metadata kept.
    for cid in vip:
        assert state.get(cid)["metadata"]["Tier"] == "VIP"

    writes, mails = state.stats()["writes"], len(inbox.messages)
    again = run(giftflow, DAYS, instance, refunds_enabled=True)
    assert all(r.success for r in again)
    assert state.stats()["writes"] == writes and len(inbox.messages) == mails
    # The rerun keeps each rule's row: what the first run did is done_before, not folded into "(no rule)".
    counts: dict = {}
    for r in again:
        for rule, c in per_rule_counts(r).items():
            for outcome, n in c.items():
                counts[(rule, outcome)] = counts.get((rule, outcome), 0) + n
    assert (
        counts[("refund_small_fraud_warnings", "matched")]
        == counts[("refund_small_fraud_warnings", "done_before")]
        == len(refunds)
    )
    assert counts[("tag_vip_customers", "done_before")] == len(vip)


def test_refunds_are_off_by_default_and_would_refund_sends_nothing(sims, inbox, giftflow):
    state = sims.stripe_state
    mail_about, _, refunds = expected_outcomes(state)
    results = run(giftflow, DAYS, dg.DagsterInstance.ephemeral())
    assert all(r.success for r in results)
    assert giftflow_refunds(state) == []
    assert len(inbox.messages) == len(mail_about)  # no mail for a refund that would have been made
    plans = [r.output_for_node("workflow_plan") for r in results]
    assert sum((p["status"] == "would_refund").sum() for p in plans) == len(refunds)


def test_the_plan_and_every_mail_are_tables_in_the_ui(sims, inbox, giftflow):
    """The plan shows as a real table (no "Show Markdown"), counts beside it; each mail says where it went."""
    results = run(giftflow, DAYS, dg.DagsterInstance.ephemeral())
    assert all(r.success for r in results)
    listed = []
    for r in results:
        plan_md = r.asset_materializations_for_node("workflow_plan")[0].metadata
        plan = plan_md["plan"]
        assert isinstance(plan, dg.TableMetadataValue)
        assert [c.name for c in plan.schema.columns][:4] == ["rule", "action", "status", "object_id"]
        assert len(plan.records) == min(30, plan_md["actions"].value)
        assert sum(v.value for k, v in plan_md.items() if k.startswith("status_")) == plan_md["actions"].value
        actions = r.asset_materializations_for_node("workflow_actions")[0].metadata
        assert isinstance(actions["mails"], dg.TableMetadataValue)
        # the per-rule counts are one table, with no raw JSON copy of them beside it
        assert isinstance(actions["per_rule"], dg.TableMetadataValue)
        assert not any(isinstance(v, dg.JsonMetadataValue) for v in actions.values())
        assert actions["mails_went_to"].value == f"SMTP 127.0.0.1:{inbox.port}"
        listed += [rec.data for rec in actions["mails"].records]
    assert len(listed) == len(inbox.messages) > 0
    sent = {m["X-Giftflow-Key"].split(":")[1]: " ".join(m["Subject"].split()) for _, m in inbox.messages}  # unfolded
    for mail in listed:
        assert mail["recipient"] == TEAM and mail["went_to"] == f"smtp://127.0.0.1:{inbox.port}"
        assert sent[mail["object"]] == mail["subject"]


def test_mails_without_smtp_list_their_eml_file(sims, inbox, giftflow, tmp_path):
    results = run(giftflow, DAYS[:2], dg.DagsterInstance.ephemeral(), smtp_host=None)
    mails = [
        rec.data
        for r in results
        for rec in r.asset_materializations_for_node("workflow_actions")[0].metadata["mails"].records
    ]
    assert mails and all(
        m["went_to"].startswith(str(tmp_path / "outbox")) and m["went_to"].endswith(".eml") and os.path.exists(m["went_to"])
        for m in mails
    )


def test_dry_run_sends_and_writes_nothing(sims, inbox, giftflow):
    state = sims.stripe_state
    results = run(giftflow, DAYS[:1], dg.DagsterInstance.ephemeral(), dry_run=True, refunds_enabled=True)
    assert results[0].success
    assert state.stats()["writes"] == 0 and inbox.messages == []


def test_a_dry_run_tag_makes_one_run_send_and_write_nothing(sims, inbox, giftflow):
    state = sims.stripe_state
    job = giftflow.but(refunds_enabled=True).job("stripe_workflows")
    result = job.execute_in_process(
        partition_key=DAYS[0].isoformat(),
        instance=dg.DagsterInstance.ephemeral(),
        run_config=QUIET,
        tags={"giftflow/dry_run": "yes"},
    )
    assert result.success
    assert state.stats()["writes"] == 0 and inbox.messages == []
    assert result.asset_materializations_for_node("workflow_actions")[0].metadata["dry_run"].value is True


def test_a_plan_over_the_refund_cap_is_blocked(sims, inbox, giftflow, tmp_path):
    rules = (ROOT / "giftflow/default_rules.yaml").read_text().replace("max_refunds_per_run: 20", "max_refunds_per_run: 0")
    (tmp_path / "rules.yaml").write_text(rules)
    state = sims.stripe_state
    result = run(
        giftflow, DAYS[:1], dg.DagsterInstance.ephemeral(), refunds_enabled=True, rules_path=str(tmp_path / "rules.yaml")
    )[0]
    assert not result.success
    failed = {ev.check_name for ev in result.get_asset_check_evaluations() if not ev.passed}
    assert failed == {"refund_caps"}
    assert giftflow_refunds(state) == [] and inbox.messages == []  # the apply step never ran


def test_missing_team_address_is_blocked(sims, inbox, giftflow):
    result = run(giftflow, DAYS[:1], dg.DagsterInstance.ephemeral(), team_email=None)[0]
    evaluations = {ev.check_name: ev for ev in result.get_asset_check_evaluations()}
    failed = {name for name, ev in evaluations.items() if not ev.passed}
    assert failed == {"mail_has_recipient"} and inbox.messages == []
    # What breaks the check is a table the UI shows as is, not Markdown behind "Show Markdown"; a passing check
    # shows only its count.
    blocked = evaluations["mail_has_recipient"].metadata
    assert isinstance(blocked["details"], dg.TableMetadataValue)
    assert [c.name for c in blocked["details"].schema.columns] == ["violation"]
    rows = [rec.data["violation"] for rec in blocked["details"].records]
    assert len(rows) == blocked["violations"].value > 0 and all(r.endswith(": no recipient") for r in rows)
    passed = evaluations["refund_caps"].metadata
    assert passed["violations"].value == 0 and "details" not in passed
    assert not any(isinstance(v, dg.MarkdownMetadataValue) for ev in evaluations.values() for v in ev.metadata.values())


@pytest.mark.e2e  # a Dagster run in a subprocess, killed
def test_sigkill_in_the_middle_then_rerun_loses_and_duplicates_nothing(sims, inbox, giftflow, world, tmp_path):
    state = sims.stripe_state
    mail_about, _, refunds = expected_outcomes(state, DAYS[0])
    inbox.delay_s = 0.3  # slow mail delivery so the kill lands while actions are being carried out
    day = DAYS[0].isoformat()
    script = (
        "import sys, dagster as dg; from giftflow.orchestration.definitions import build_defs; "
        "build_defs().resolve_job_def('stripe_workflows').execute_in_process("
        "partition_key=sys.argv[1], instance=dg.DagsterInstance.get())"
    )
    # The child reads its settings from the environment, as a production run does.
    child_env = {
        **os.environ,
        "STRIPE_API_BASE": sims.stripe_url,
        "STRIPE_API_KEY": sims.stripe_key,
        "DAGSTER_HOME": str(tmp_path),
        "GIFTFLOW_DATABASE_URL": giftflow.settings.store_url,
        "GIFTFLOW_TEAM_EMAIL": TEAM,
        "GIFTFLOW_SMTP_HOST": "127.0.0.1",
        "GIFTFLOW_SMTP_PORT": str(inbox.port),
        "GIFTFLOW_SMTP_STARTTLS": "false",
        "GIFTFLOW_MAIL_FROM": "giftflow@shop.example",
        "GIFTFLOW_REFUNDS_ENABLED": "true",
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", script, day],
        env=child_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # Rules run in file order: large-order mails, VIP tags, refunds, then escalation mails. Kill once the
    # refunds have started, so both a refund and the mails around it are cut short.
    while not giftflow_refunds(state) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sent_before_kill, refunded_before_kill = len(inbox.messages), len(giftflow_refunds(state))
    assert sent_before_kill >= 1 and refunded_before_kill >= 1

    inbox.delay_s = 0
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:  # the killed run's instance
        result = run(giftflow, [DAYS[0]], instance, refunds_enabled=True)[0]
    assert result.success
    day_mails = {k for k in inbox.keys()}
    assert len(inbox.keys()) == len(day_mails)  # 0 duplicate mails, counted at the SMTP server
    by_charge = {}
    for r in giftflow_refunds(state):
        by_charge[r["charge"]] = by_charge.get(r["charge"], 0) + 1
    assert all(n == 1 for n in by_charge.values())  # 0 duplicate refunds, counted at Stripe

    def mailed_object(key):  # rule:object:index -> the payment intent, or the warned charge
        obj = key.split(":")[1]
        return state.retrieve("radar.early_fraud_warning", obj)["charge"] if obj.startswith("issfr_") else obj

    assert {mailed_object(k) for k in day_mails} == mail_about  # nothing lost
    assert {r["charge"]: r["amount"] for r in giftflow_refunds(state)} == refunds
    assert sent_before_kill < len(mail_about)  # the kill really cut the apply step short
    print(
        f"\nSIGKILL after {sent_before_kill} of {len(mail_about)} mails and {refunded_before_kill} of "
        f"{len(refunds)} refunds; after the rerun: {len(inbox.keys())} mails ({len(day_mails)} distinct), "
        f"{sum(by_charge.values())} refunds on {len(by_charge)} charges"
    )


def _failures(result) -> str:
    assert result.get_failed_step_keys() == {"workflow_actions"}
    failure = result.failure_data_for_node("workflow_actions")
    return failure.error.to_string() + str(failure.user_failure_data)


@pytest.mark.e2e  # ~5 s
def test_a_mail_the_smtp_server_refuses_fails_alone_and_the_rerun_sends_only_it(sims, inbox, giftflow, tmp_path):
    # Escalations go to their own address, which the SMTP server refuses; large-order mails go to the team.
    rules = (
        (ROOT / "giftflow/default_rules.yaml")
        .read_text()
        .replace(
            '      - type: email\n        to: team\n        subject: "Early fraud',
            '      - type: email\n        to: fraud@shop.example\n        subject: "Early fraud',
        )
    )
    assert "fraud@shop.example" in rules
    (tmp_path / "rules.yaml").write_text(rules)
    state = sims.stripe_state
    inbox.refused.add("fraud@shop.example")
    mail_about, vip, refunds = expected_outcomes(state)
    escalated = {k for k in mail_about if k.startswith("ch_")}
    assert escalated and vip and refunds and mail_about - escalated
    instance = dg.DagsterInstance.ephemeral()
    extra = {"refunds_enabled": True, "rules_path": str(tmp_path / "rules.yaml")}
    results = run(giftflow, DAYS, instance, **extra)
    failed = [r for r in results if not r.success]
    assert failed and all("SMTPRecipientsRefused" in _failures(r) and "mailbox unavailable" in _failures(r) for r in failed)
    # Everything else happened: the team mails, the refunds and the VIP tags.
    assert {rcpt[0] for rcpt, _ in inbox.messages} == {TEAM} and len(inbox.messages) == len(mail_about - escalated)
    assert {r["charge"]: r["amount"] for r in giftflow_refunds(state)} == refunds
    assert all(state.get(cid)["metadata"]["Tier"] == "VIP" for cid in vip)

    inbox.refused.clear()
    writes = state.stats()["writes"]
    assert all(r.success for r in run(giftflow, DAYS, instance, **extra))
    assert state.stats()["writes"] == writes  # no refund or tag again
    keys = inbox.keys()
    assert len(keys) == len(set(keys)) == len(mail_about)  # the escalations now, and nothing twice
    assert sum(rcpt == ["fraud@shop.example"] for rcpt, _ in inbox.messages) == len(escalated)


def test_a_mail_that_cannot_be_built_is_a_failed_action_not_a_crashed_step(sims, inbox, giftflow):
    state = sims.stripe_state
    _, vip, refunds = expected_outcomes(state, DAYS[0])
    injected = "giftflow@shop.example\r\nBcc: everyone@elsewhere.example"
    result = run(giftflow, DAYS[:1], dg.DagsterInstance.ephemeral(), refunds_enabled=True, mail_from=injected)[0]
    assert not result.success and inbox.messages == []
    assert "its From header contains a line break" in _failures(result)
    assert {r["charge"]: r["amount"] for r in giftflow_refunds(state)} == refunds  # the other actions went on
    assert all(state.get(cid)["metadata"]["Tier"] == "VIP" for cid in vip)


def test_smtp_login_without_tls_is_refused_unless_allowed(tmp_path):
    from aiosmtpd.smtp import AuthResult

    from giftflow.adapters.mailer import Mailer, MailError

    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        auth_require_tls=False,
        authenticator=lambda *a: AuthResult(success=True),
    )
    controller.start()
    try:
        plain = dict(
            smtp_host="127.0.0.1",
            smtp_port=controller.port,
            smtp_user="u",
            smtp_password="pw",
            smtp_starttls=False,
            mail_from="giftflow@shop.example",
        )
        with pytest.raises(MailError, match="GIFTFLOW_SMTP_ALLOW_PLAINTEXT_LOGIN"):
            Mailer(**plain).send(TEAM, "s", "b", "k1")
        assert inbox.messages == []
        Mailer(**plain, smtp_allow_plaintext_login=True).send(TEAM, "s", "b", "k2")
        assert inbox.keys() == ["k2"]
    finally:
        controller.stop()
