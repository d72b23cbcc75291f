"""The one code location: every asset, job, resource, sensor and schedule of giftflow."""

import os

import dagster as dg

from giftflow.orchestration import giftcard, sensors, workflows
from giftflow.orchestration.resources import (
    CardivoResource,
    MailerResource,
    StoreResource,
    StripeResource,
)
from giftflow.orchestration.reverse_etl import build_sync_definitions
from giftflow.settings import Settings, env_bool


def _resources() -> dict:
    # Secrets come through EnvVar so Dagster never shows their values; optional knobs are read here.
    return {
        "cardivo": CardivoResource(api_base=dg.EnvVar("CARDIVO_API_BASE"), api_key=dg.EnvVar("CARDIVO_API_KEY")),
        "stripe_api": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            api_base=os.environ.get("STRIPE_API_BASE") or None,
            max_requests_per_second=int(os.environ.get("GIFTFLOW_STRIPE_MAX_RPS", "20")),
            max_concurrent_writes=int(os.environ.get("GIFTFLOW_STRIPE_WRITE_CONCURRENCY", "8")),
        ),
        "store": StoreResource(database_url=os.environ.get("GIFTFLOW_DATABASE_URL") or None),
        "settings": Settings.from_env(),
        "notifier": MailerResource(
            smtp_host=os.environ.get("GIFTFLOW_SMTP_HOST") or None,
            smtp_port=int(os.environ.get("GIFTFLOW_SMTP_PORT", "587")),
            smtp_user=os.environ.get("GIFTFLOW_SMTP_USER") or None,
            smtp_password=dg.EnvVar("GIFTFLOW_SMTP_PASSWORD") if os.environ.get("GIFTFLOW_SMTP_PASSWORD") else None,
            smtp_starttls=env_bool("GIFTFLOW_SMTP_STARTTLS", default=True),
            smtp_allow_plaintext_login=env_bool("GIFTFLOW_SMTP_ALLOW_PLAINTEXT_LOGIN", default=False),
            mail_from=os.environ.get("GIFTFLOW_MAIL_FROM") or "giftflow@localhost",
        ),
    }


def build_defs() -> dg.Definitions:
    """The Definitions, with optional settings read from the environment now."""
    return dg.Definitions.merge(_core_defs(), build_sync_definitions(os.environ.get("GIFTFLOW_SYNCS_DIR") or None))


def _core_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules([giftcard, workflows]),
        jobs=[giftcard.giftcard_sync, workflows.stripe_workflows],
        sensors=[sensors.cardivo_redemptions_sensor, sensors.stripe_events_sensor, sensors.late_data_backfill],
        resources=_resources(),
    )



