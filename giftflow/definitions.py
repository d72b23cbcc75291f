"""The one code location: every asset, job, resource, sensor and schedule of giftflow."""

import os

import dagster as dg

from giftflow.assets import giftcard
from giftflow.resources.cardivo import CardivoResource
from giftflow.resources.settings import Settings
from giftflow.resources.store import GiftflowStore
from giftflow.resources.stripe import StripeResource


def _resources() -> dict:
    # Secrets come through EnvVar so Dagster never shows their values; optional knobs are read here.
    return {
        "cardivo": CardivoResource(api_base=dg.EnvVar("CARDIVO_API_BASE"), api_key=dg.EnvVar("CARDIVO_API_KEY")),
        "stripe_api": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            api_base=os.environ.get("STRIPE_API_BASE") or None,
            max_requests_per_second=int(os.environ.get("GIFTFLOW_STRIPE_MAX_RPS", "20")),
        ),
        "store": GiftflowStore(database_url=os.environ.get("GIFTFLOW_DATABASE_URL") or None),
        "settings": Settings.from_env(),
    }


def build_defs() -> dg.Definitions:
    """The Definitions, with optional settings read from the environment now."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([giftcard]),
        jobs=[giftcard.giftcard_sync],
        resources=_resources(),
    )


defs = build_defs()
