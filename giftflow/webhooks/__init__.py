"""Webhook receiver: verifies and stores Cardivo and Stripe deliveries for the sensors to pick up."""

from giftflow.webhooks.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
