"""giftflow: Dagster pipelines that keep Stripe in step with Cardivo and with Stripe itself."""

from giftflow.definitions import defs

__all__ = ["defs"]
