"""`giftflow check`: is this deployment ready to run? Every setting, the rules file, every sync file, and one
cheap authenticated call to Cardivo, to Stripe and to each database, each a line with what is wrong and what to
fix. Nothing here writes anywhere (the SQLite default of giftflow's database is created where it would be)."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import stripe

from giftflow.adapters.cardivo import CardivoClient, CardivoError
from giftflow.adapters.config_files import load_rules, scan_folder
from giftflow.adapters.stripe import STRIPE_API, StripeClient, mask_key
from giftflow.domain.rules import RulesError
from giftflow.domain.sync_spec import SyncSpecError
from giftflow.settings import Settings, SettingsError, missing_variable

OK, PROBLEM, WARN, SKIP = "ok", "problem", "warn", "skip"
DAGSTER_POSTGRES = (
    "DAGSTER_POSTGRES_HOST",
    "DAGSTER_POSTGRES_PORT",
    "DAGSTER_POSTGRES_USER",
    "DAGSTER_POSTGRES_PASSWORD",
    "DAGSTER_POSTGRES_DB",
)
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    item: str
    status: str  # ok, problem, warn (worth a look, not blocking) or skip (not configured, not needed)
    detail: str

    def line(self) -> str:
        return f"{self.status:<8} {self.item:<18} {self.detail}"


def run_checks(environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in order; a check that cannot run (its settings are bad) says so instead."""
    environ = os.environ if environ is None else environ
    checks, settings = _settings()
    steps: list[tuple[str, Callable[[Settings], Check | list[Check]]]] = [
        ("rules", _rules),
        ("sync files", _syncs),
        ("cardivo", _cardivo),
        ("stripe", _stripe),
        ("giftflow database", _store),
        ("mail", _mail),
    ]
    for item, fn in steps:
        checks += _guarded(item, functools.partial(fn, settings))
    return checks + _guarded("dagster database", lambda: _dagster_db(environ))


def failed(checks: list[Check]) -> bool:
    return any(c.status == PROBLEM for c in checks)


def _guarded(item: str, fn: Callable[[], list[Check] | Check]) -> list[Check]:
    try:
        out = fn()
    except (RulesError, SyncSpecError, CardivoError) as exc:  # their messages say what and where (file:line)
        return [Check(item, PROBLEM, str(exc).replace(" `giftflow check` tries it.", ""))]
    except Exception as exc:  # a check must report, never crash the others
        return [Check(item, PROBLEM, f"{type(exc).__name__}: {exc}")]
    return out if isinstance(out, list) else [out]


def _settings() -> tuple[list[Check], Settings]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notices are reported below, once
        try:
            settings = Settings.from_env()
            checks = [Check("settings", OK, f"{len(Settings.model_fields)} variables read, all values valid")]
        except SettingsError as exc:
            settings, _ = Settings.from_env_or_defaults()
            checks = [Check("settings", PROBLEM, p) for p in exc.problems]
    checks += [Check("settings", WARN, n) for n in settings.notices]
    return checks, settings


def _rules(settings: Settings) -> Check:
    rules = load_rules(settings.rules_path)  # RulesError: file:line: problem
    where = settings.rules_path or "the default rules (GIFTFLOW_RULES unset)"
    return Check("rules", OK, f"{where}: {len(rules.rules)} rules")


def _syncs(settings: Settings) -> list[Check]:
    loaded, broken = scan_folder(settings.syncs_dir)
    out = [Check("sync files", OK, f"sync_{spec.name} ({spec.mode}) from {base}") for spec, base in loaded]
    out += [Check("sync files", PROBLEM, b.error) for b in broken]
    return out or [Check("sync files", SKIP, f"no sync files in {settings.syncs_dir or 'the shipped folder'}")]


def _cardivo(settings: Settings) -> Check:
    base, key = settings.cardivo_api_base, settings.cardivo_api_key
    if not base or key is None:
        name = "CARDIVO_API_BASE" if not base else "CARDIVO_API_KEY"
        return Check("cardivo", PROBLEM, missing_variable(name, "the gift-card sync").replace("\n", " "))
    client = CardivoClient(
        api_base=base,
        api_key=key.get_secret_value(),
        page_size=1,
        max_attempts=2,
        timeout_s=TIMEOUT_S,
        fetch_deadline_s=2 * TIMEOUT_S,
    )
    client.list_redemptions(max_pages=1)  # CardivoError: says what the server said, the key named on a 401
    return Check("cardivo", OK, f"{base.rstrip('/')} accepted CARDIVO_API_KEY (listed redemptions)")


def _stripe(settings: Settings) -> Check:
    if not settings.stripe_api_key:
        return Check("stripe", PROBLEM, missing_variable("STRIPE_API_KEY", "every Stripe step").replace("\n", " "))
    key = settings.stripe_api_key.get_secret_value()
    base = (settings.stripe_api_base or STRIPE_API).rstrip("/")
    client = StripeClient(api_key=key, api_base=settings.stripe_api_base, max_network_retries=0)
    try:
        client.check_key()
    except stripe.APIConnectionError as exc:
        return Check(
            "stripe",
            PROBLEM,
            f"cannot reach {base} (STRIPE_API_BASE"
            f"{'' if settings.stripe_api_base else ' unset: Stripe itself'}): {exc.user_message or exc}",
        )
    except stripe.StripeError as exc:  # the key errors name STRIPE_API_KEY, masked, and the base URL
        return Check("stripe", PROBLEM, str(exc).replace(" `giftflow check` tries it.", ""))
    mode = "live" if "_live_" in key else "test" if "_test_" in key else "unknown"
    return Check("stripe", OK, f"{base} accepted STRIPE_API_KEY ({mask_key(key)}, {mode} mode; listed 1 customer)")


def _shown(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _ping(url: str | sa.URL) -> None:
    engine = sa.create_engine(url, connect_args=_connect_args(url), hide_parameters=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def _connect_args(url: str | sa.URL) -> dict:
    backend = sa.make_url(url).get_backend_name()
    return {"connect_timeout": int(TIMEOUT_S)} if backend == "postgresql" else {}


def _store(settings: Settings) -> Check:
    url = sa.make_url(settings.store_url)
    source = "GIFTFLOW_DATABASE_URL" if settings.database_url else "the default under DAGSTER_HOME"
    try:
        _ping(url)
    except Exception as exc:
        return Check("giftflow database", PROBLEM, f"{_shown(url)} ({source}): {_first_line(exc)}")
    return Check("giftflow database", OK, f"{_shown(url)} ({source}) answers")


def _dagster_db(environ: Mapping[str, str]) -> Check:
    values = {name: environ.get(name) or "" for name in DAGSTER_POSTGRES}
    if not any(values.values()):
        return Check(
            "dagster database",
            SKIP,
            "DAGSTER_POSTGRES_* unset: Dagster uses the storage its DAGSTER_HOME's "
            "dagster.yaml names (embedded SQLite without one)",
        )
    missing = [name for name, value in values.items() if not value]
    if missing:
        return Check(
            "dagster database",
            PROBLEM,
            f"{', '.join(missing)} not set (the repo's dagster.yaml reads all "
            "five DAGSTER_POSTGRES_* variables); README, Running in production",
        )
    url = sa.URL.create(
        "postgresql+psycopg2",
        username=values["DAGSTER_POSTGRES_USER"],
        password=values["DAGSTER_POSTGRES_PASSWORD"],
        host=values["DAGSTER_POSTGRES_HOST"],
        port=int(values["DAGSTER_POSTGRES_PORT"]),
        database=values["DAGSTER_POSTGRES_DB"],
    )
    try:
        _ping(url)
    except Exception as exc:
        return Check("dagster database", PROBLEM, f"{_shown(url)} (DAGSTER_POSTGRES_*): {_first_line(exc)}")
    home = environ.get("DAGSTER_HOME")
    if not home or not (Path(home) / "dagster.yaml").is_file():
        return Check(
            "dagster database",
            PROBLEM,
            f"{_shown(url)} answers, but DAGSTER_HOME ({home or 'unset'}) has no "
            "dagster.yaml: copy the repo's there, or Dagster will not use it",
        )
    return Check("dagster database", OK, f"{_shown(url)} (DAGSTER_POSTGRES_*) answers; {home}/dagster.yaml")


def _mail(settings: Settings) -> list[Check]:
    where = (
        f"SMTP {settings.smtp_host}:{settings.smtp_port}"
        if settings.smtp_host
        else f".eml files in {Path(settings.outbox_dir).resolve()} (GIFTFLOW_SMTP_HOST unset)"
    )
    out = [Check("mail", OK, f"team mails go to {where}")]
    if not settings.team_email:
        out.append(
            Check(
                "mail",
                WARN,
                "GIFTFLOW_TEAM_EMAIL unset: a workflow plan with a team mail is blocked by its mail_has_recipient check",
            )
        )
    return out


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
