"""The one code location: every asset, job, resource, sensor and schedule of giftflow.

`build_defs()` reads the settings once (`Settings.from_env`). When they are bad, the code location still loads:
the same assets, jobs, schedules and sensors, but every asset fails at once with a `dg.Failure` listing each
bad variable (its description says so too), and every resource fails the same way, so a sensor tick shows it.
"""

import logging

import dagster as dg

from giftflow.orchestration import giftcard, giftcard_checks, sensors, workflows
from giftflow.orchestration.resources import (
    CardivoResource,
    MailerResource,
    StoreResource,
    StripeResource,
    settings_resource,
)
from giftflow.orchestration.reverse_etl import build_sync_definitions
from giftflow.settings import Settings, env_name

log = logging.getLogger("giftflow")


def resources_for(settings: Settings, *, secrets_from_env: bool = True) -> dict:
    """The Definitions' resources. Secrets read from the environment stay the variables they came from
    (`dg.EnvVar`: Dagster resolves them at run time and never shows them); settings a program built itself
    (`Settings.of`) carry their values."""

    def _secret(field: str) -> dg.EnvVar | str | None:
        value = getattr(settings, field)
        if value is None:
            return None
        return dg.EnvVar(env_name(field)) if secrets_from_env else value.get_secret_value()

    # CARDIVO_* and STRIPE_API_KEY are required by the steps that call the APIs: unset, such a step fails naming
    # the variable and where it is documented, while the other steps, the code location and the receiver work.
    return {
        "cardivo": CardivoResource(api_base=settings.cardivo_api_base, api_key=_secret("cardivo_api_key")),
        "stripe_api": StripeResource(
            api_key=_secret("stripe_api_key"),
            api_base=settings.stripe_api_base,
            max_requests_per_second=settings.stripe_max_rps,
            max_concurrent_writes=settings.stripe_write_concurrency,
            # On PostgreSQL the budget lives in giftflow's database: one for every run on every host.
            rate_limit_db=(
                settings.stripe_rate_db_path
                if settings.stripe_rate_db is not None or not settings.store_url.startswith("postgresql")
                else _secret("database_url")
            ),
        ),
        # The URL may carry a password: given as its variable where set; the default SQLite path is plain.
        "store": StoreResource(database_url=_secret("database_url") or settings.store_url),
        "settings": settings_resource(settings),
        "notifier": MailerResource(
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=_secret("smtp_password"),
            smtp_starttls=settings.smtp_starttls,
            smtp_allow_plaintext_login=settings.smtp_allow_plaintext_login,
            mail_from=settings.mail_from,
            outbox_dir=settings.outbox_dir,
        ),
    }


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """The Definitions, from `settings` (default: read from the environment now). Bad settings give the
    code location that shows them (module docstring) instead of an import error that hides every job."""
    problems: list[str] = []
    from_env = settings is None
    if settings is None:
        settings, problems = Settings.from_env_or_defaults()
    for notice in settings.notices:
        log.warning(notice)
    defs = dg.Definitions.merge(
        _core_defs(settings, resources_for(settings, secrets_from_env=from_env)), build_sync_definitions(settings.syncs_dir)
    )
    if problems:
        log.error(
            "giftflow settings are invalid; every asset fails until they are fixed:\n%s",
            "\n".join(f"  - {p}" for p in problems),
        )
        return _broken(defs, problems)
    return defs


def _core_defs(settings: Settings, resources: dict) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([giftcard, workflows]),
        asset_checks=dg.load_asset_checks_from_modules([giftcard_checks]),
        jobs=[giftcard.giftcard_sync, workflows.stripe_workflows],
        sensors=sensors.build_sensors(
            settings.sensor_interval_s, settings.cardivo_lookback_s, settings.rerun_days, settings.backfill_hour_utc
        ),
        resources=resources,
        # Runs Dagster builds from an asset selection (a backfill's range run, Materialize in the UI) run their
        # short, I/O-bound steps in one process, as the jobs do: a process per step costs seconds each.
        executor=dg.in_process_executor,
    )


# -- bad settings --------------------------------------------------------------------------------------------


def settings_failure(problems: list[str]) -> str:
    return (
        "giftflow settings are invalid, so nothing runs until they are fixed (then reload the code "
        "location):\n" + "\n".join(f"- {p}" for p in problems)
    )


def _failing_asset(assets_def: dg.AssetsDefinition, message: str) -> dg.AssetsDefinition:
    """The same assets (keys, groups, partitions, lineage, checks), described as broken, failing at once."""
    banner = f"**Not runnable: {message.splitlines()[0]}**\n\n```\n{message}\n```"
    specs = [s.replace_attributes(description=f"{banner}\n\n{s.description or ''}") for s in assets_def.specs]

    @dg.multi_asset(name=assets_def.node_def.name, specs=specs, check_specs=list(assets_def.check_specs), can_subset=True)
    def broken_settings(context: dg.AssetExecutionContext):
        raise dg.Failure(description=message)

    return broken_settings


def _failing_resource(message: str) -> dg.ResourceDefinition:
    @dg.resource(description=message)
    def broken_settings(_init_context) -> None:
        raise dg.Failure(description=message)

    return broken_settings


def _broken(defs: dg.Definitions, problems: list[str]) -> dg.Definitions:
    message = settings_failure(problems)
    assets = [_failing_asset(a, message) if isinstance(a, dg.AssetsDefinition) else a for a in defs.assets or []]
    # The checks read the store and the settings: they would fail the run at resource start, before any step
    # could say why. Without them each asset fails at once, naming every bad variable.
    return dg.Definitions(
        assets=assets,
        jobs=defs.jobs,
        schedules=defs.schedules,
        sensors=defs.sensors,
        resources={key: _failing_resource(message) for key in (defs.resources or {})},
    )
