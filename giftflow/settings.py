"""Every setting of giftflow, read from the environment in one place: `Settings.from_env()`.

Nothing here runs at import. The entry points (`build_defs`, the CLI, the webhook receiver) call
`Settings.from_env()` once and hand the values on: adapters take them as constructor arguments, sensors get
their intervals when the Definitions are built. A bad value is a `SettingsError` naming every bad variable,
its value (masked where it is a secret) and what is allowed; a `GIFTFLOW_*` variable giftflow does not know
(`GIFTFLOW_DRYRUN`) is a warning with the closest known name.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AliasChoices, BeforeValidator, Field, PrivateAttr, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
BOOL_ALLOWED = "true, false, 1, 0, yes, no, on, off"


def parse_bool(value: Any) -> Any:
    """true/false/1/0/yes/no/on/off (any case); anything else is an error, never a silent default."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean; allowed: {BOOL_ALLOWED}")


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


EnvBool = Annotated[bool, BeforeValidator(parse_bool)]
SyncMode = Annotated[Literal["update", "upsert"], BeforeValidator(_lower)]


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from the variable `name` (Settings(field=...) works too)."""
    return Field(validation_alias=AliasChoices(name), **kwargs)


class SettingsWarning(UserWarning):
    """A setting that is not an error but is probably not what was meant (a misspelt variable name)."""


class SettingsError(ValueError):
    """One or more variables have bad values: `problems` has one line per variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("giftflow settings are invalid (fix these variables):\n" + "\n".join(f"  - {p}" for p in problems))


class Settings(BaseSettings):
    """How giftflow runs (README, Configuration). Field names are the variables' names without the prefix."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", env_ignore_empty=True, populate_by_name=True, case_sensitive=True
    )

    # The APIs. Required for the runs that use them: a run whose API is not configured fails naming the variable.
    cardivo_api_base: str | None = _env("CARDIVO_API_BASE", default=None, description="the Cardivo API")
    cardivo_api_key: SecretStr | None = _env("CARDIVO_API_KEY", default=None, description="Cardivo API key")
    stripe_api_key: SecretStr | None = _env("STRIPE_API_KEY", default=None, description="Stripe secret key")
    stripe_api_base: str | None = _env("STRIPE_API_BASE", default=None, description="Stripe API base override")

    # giftflow's own state and Dagster's instance directory (giftflow keeps its SQLite files there by default).
    database_url: SecretStr | None = _env(
        "GIFTFLOW_DATABASE_URL", default=None, description="SQLAlchemy URL; default SQLite under $DAGSTER_HOME"
    )
    dagster_home: Path | None = _env("DAGSTER_HOME", default=None, description="Dagster's instance directory")

    # Run-wide switches.
    sync_mode: SyncMode = _env(
        "GIFTFLOW_SYNC_MODE",
        default="update",
        description="update: existing customers only; upsert: also create missing ones",
    )
    dry_run: EnvBool = _env(
        "GIFTFLOW_DRY_RUN", default=False, description="plan and show everything, write nothing, send nothing"
    )
    customer_mirror_max_age_s: int = _env(
        "GIFTFLOW_CUSTOMER_MIRROR_MAX_AGE_S",
        default=0,
        ge=0,
        le=86400 * 30,
        description="reuse the Stripe customer mirror when refreshed this recently",
    )
    syncs_dir: Path | None = _env("GIFTFLOW_SYNCS_DIR", default=None, description="folder of sync files")
    rules_path: str | None = _env("GIFTFLOW_RULES", default=None, description="rules file replacing the default")
    team_email: str | None = _env("GIFTFLOW_TEAM_EMAIL", default=None, description="where team mails go")
    refunds_enabled: EnvBool = _env(
        "GIFTFLOW_REFUNDS_ENABLED", default=False, description="let the workflows refund (else: 'would refund')"
    )

    # Stripe pacing.
    stripe_max_rps: int = _env(
        "GIFTFLOW_STRIPE_MAX_RPS",
        default=20,
        ge=1,
        le=1000,
        description="Stripe requests per second, all runs on the host together",
    )
    stripe_write_concurrency: int = _env(
        "GIFTFLOW_STRIPE_WRITE_CONCURRENCY", default=8, ge=1, le=64, description="Stripe writes in flight at once"
    )
    stripe_rate_db: Path | None = _env(
        "GIFTFLOW_STRIPE_RATE_DB",
        default=None,
        description="SQLite file of the shared Stripe budget; default $DAGSTER_HOME/giftflow_stripe_rate.sqlite",
    )

    # Team mails.
    smtp_host: str | None = _env("GIFTFLOW_SMTP_HOST", default=None, description="SMTP server; unset: outbox")
    smtp_port: int = _env("GIFTFLOW_SMTP_PORT", default=587, ge=1, le=65535, description="SMTP port")
    smtp_user: str | None = _env("GIFTFLOW_SMTP_USER", default=None, description="SMTP login")
    smtp_password: SecretStr | None = _env("GIFTFLOW_SMTP_PASSWORD", default=None, description="SMTP password")
    smtp_starttls: EnvBool = _env("GIFTFLOW_SMTP_STARTTLS", default=True, description="STARTTLS before login")
    smtp_allow_plaintext_login: EnvBool = _env(
        "GIFTFLOW_SMTP_ALLOW_PLAINTEXT_LOGIN", default=False, description="log in without TLS (trusted networks)"
    )
    mail_from: str = _env("GIFTFLOW_MAIL_FROM", default="giftflow@localhost", description="sender of team mails")

    # Sensors and the daily backfill.
    sensor_interval_s: int = _env(
        "GIFTFLOW_SENSOR_INTERVAL_S", default=15, ge=1, le=86400, description="how often the Cardivo and Stripe sensors poll"
    )
    cardivo_lookback_s: int = _env(
        "GIFTFLOW_CARDIVO_LOOKBACK_S",
        default=60,
        ge=0,
        le=86400,
        description="how far before its edge the Cardivo sensor polls again",
    )
    rerun_days: int = _env(
        "GIFTFLOW_RERUN_DAYS", default=7, ge=0, le=366, description="days the daily backfill re-runs before yesterday"
    )
    backfill_hour_utc: int = _env(
        "GIFTFLOW_BACKFILL_HOUR_UTC", default=1, ge=0, le=23, description="hour (UTC) the daily backfill starts"
    )

    # The webhook receiver.
    cardivo_webhook_secret: SecretStr | None = _env(
        "GIFTFLOW_CARDIVO_WEBHOOK_SECRET", default=None, description="Cardivo webhook signing secret"
    )
    stripe_webhook_secret: SecretStr | None = _env(
        "GIFTFLOW_STRIPE_WEBHOOK_SECRET", default=None, description="Stripe webhook signing secret"
    )
    webhook_max_body_bytes: int = _env(
        "GIFTFLOW_WEBHOOK_MAX_BODY_BYTES", default=1 << 20, ge=1, le=100 << 20, description="largest webhook body accepted"
    )
    webhook_read_timeout_s: float = _env(
        "GIFTFLOW_WEBHOOK_READ_TIMEOUT_S",
        default=10.0,
        gt=0,
        le=300,
        description="seconds a sender has to deliver the whole body",
    )
    webhook_retention_days: int = _env(
        "GIFTFLOW_WEBHOOK_RETENTION_DAYS",
        default=30,
        ge=4,
        le=3650,
        description="days a received delivery is kept (senders retry for 3)",
    )

    _notices: tuple[str, ...] = PrivateAttr(default=())

    # -- reading -------------------------------------------------------------------------------------------

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment. SettingsError lists every bad variable; unknown GIFTFLOW_*
        names are SettingsWarnings (also kept in `notices`)."""
        notices = unknown_variable_notices(os.environ)
        for notice in notices:
            warnings.warn(notice, SettingsWarning, stacklevel=2)
        try:
            settings = cls()
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None
        settings._notices = tuple(notices)
        return settings

    @classmethod
    def from_env_or_defaults(cls) -> tuple[Settings, list[str]]:
        """The settings with every bad variable at its default, and the problems (empty when all is well):
        enough to build a code location that shows the problems instead of vanishing."""
        try:
            return cls.from_env(), []
        except SettingsError as exc:
            problems = exc.problems
            bad = {_field_of(p) for p in problems}
        settings = cls(**{name: cls.model_fields[name].default for name in bad if name})
        settings._notices = tuple(unknown_variable_notices(os.environ))
        return settings, problems

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings from `values` alone, every other field at its default: no environment is read (tests and
        programs that embed giftflow). Field names, not variable names: `Settings.of(dry_run=True)`."""
        try:
            return _GivenSettings(**values)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc)) from None

    @property
    def notices(self) -> tuple[str, ...]:
        """Warnings found while reading (misspelt variable names)."""
        return self._notices

    # -- derived values ------------------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """Where giftflow keeps its local files: $DAGSTER_HOME, else .dagster_home in the working directory."""
        return self.dagster_home or Path(".dagster_home")

    @property
    def store_url(self) -> str:
        """giftflow's database: GIFTFLOW_DATABASE_URL, else a SQLite file under $DAGSTER_HOME."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'giftflow.sqlite').resolve()}"

    @property
    def stripe_rate_db_path(self) -> str | None:
        """The shared Stripe budget's SQLite file; None (a per-process budget) without DAGSTER_HOME."""
        if self.stripe_rate_db is not None:
            return str(self.stripe_rate_db)
        return str(self.dagster_home / "giftflow_stripe_rate.sqlite") if self.dagster_home else None

    @property
    def outbox_dir(self) -> str:
        return str(self.home / "outbox")


class _GivenSettings(Settings):
    """`Settings.of`: the constructor's values are the only source."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings,)


# -- error messages ----------------------------------------------------------------------------------------


def missing_variable(name: str, needed_by: str) -> str:
    """The message for a variable a run needs and nobody set: which, why, and where it is documented."""
    return (
        f"{name} is not set, and {needed_by} needs it.\nSet it in the environment of the code server and its "
        "runs; README.md, Configuration, lists every variable (`giftflow check` checks them all)."
    )


def env_name(field: str) -> str:
    """The environment variable of a Settings field."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices), f"{field}: every field is declared with its variable as AliasChoices"
    return str(alias.choices[0])


_ENV_TO_FIELD = {env_name(f): f for f in Settings.model_fields}
KNOWN_VARIABLES = tuple(_ENV_TO_FIELD)


def _field_of(problem: str) -> str | None:
    return _ENV_TO_FIELD.get(problem.split("=", 1)[0].split(":", 1)[0].strip())


def allowed_values(field: str) -> str:
    """What a field accepts, in words."""
    info = Settings.model_fields[field]
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    kind = annotation
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(typing.get_args(kind))
    if kind is bool:
        return BOOL_ALLOWED
    if kind in (int, float):
        low = high = None
        for m in info.metadata:
            if isinstance(m, annotated_types.Ge | annotated_types.Gt):
                low = f"{'>=' if isinstance(m, annotated_types.Ge) else '>'} {getattr(m, 'ge', getattr(m, 'gt', None))}"
            if isinstance(m, annotated_types.Le | annotated_types.Lt):
                high = f"{'<=' if isinstance(m, annotated_types.Le) else '<'} {getattr(m, 'le', getattr(m, 'lt', None))}"
        noun = "an integer" if kind is int else "a number"
        return " and ".join([noun + (f" {low}" if low else ""), *([high] if high else [])])
    if kind is SecretStr:
        return "a non-empty secret"
    if kind is Path:
        return "a path"
    return "text"


def _shown(field: str | None, value: Any) -> str:
    if field and Settings.model_fields[field].annotation in (SecretStr, SecretStr | None):
        return "'**********' (secret, not shown)"
    text = str(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per bad variable: its name, its value (masked when secret) and what is allowed."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = _ENV_TO_FIELD.get(loc) or (loc if loc in Settings.model_fields else None)
        name = env_name(field) if field else loc
        if name in problems:
            continue
        allowed = allowed_values(field) if field else error["msg"]
        problems[name] = f"{name}={_shown(field, error.get('input'))} is not valid; allowed: {allowed}"
    return list(problems.values())


def unknown_variable_notices(environ: typing.Mapping[str, str]) -> list[str]:
    """A notice for every GIFTFLOW_* variable giftflow does not know, with the closest known name."""
    known = [k for k in KNOWN_VARIABLES if k.startswith("GIFTFLOW_")]
    notices = []
    for name in sorted(environ):
        if not name.startswith("GIFTFLOW_") or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "giftflow does not know it"
        notices.append(f"{name} is not a giftflow setting and is ignored: {hint}")
    return notices
