"""Thin Dagster resources: each holds an adapter's configuration and builds the adapter (`get_client()`).
Secrets arrive as `dg.EnvVar`, so Dagster resolves them at run time and never shows their values."""

from __future__ import annotations

import dagster as dg

from giftflow.adapters.cardivo import CardivoClient
from giftflow.adapters.mailer import Mailer
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient


class CardivoResource(dg.ConfigurableResource):
    """The Cardivo API (CARDIVO_API_BASE, CARDIVO_API_KEY)."""

    api_base: str
    api_key: str
    page_size: int = 100

    def get_client(self) -> CardivoClient:
        return CardivoClient(api_base=self.api_base, api_key=self.api_key, page_size=self.page_size)


class StripeResource(dg.ConfigurableResource):
    """Stripe (STRIPE_API_KEY, STRIPE_API_BASE), paced to one budget shared by every run."""

    api_key: str
    api_base: str | None = None
    max_requests_per_second: int = 20
    max_concurrent_writes: int = 8
    max_network_retries: int = 3

    def get_client(self) -> StripeClient:
        return StripeClient(api_key=self.api_key, api_base=self.api_base,
                            max_requests_per_second=self.max_requests_per_second,
                            max_concurrent_writes=self.max_concurrent_writes,
                            max_network_retries=self.max_network_retries)


class StoreResource(dg.ConfigurableResource):
    """giftflow's own database (GIFTFLOW_DATABASE_URL; default SQLite under $DAGSTER_HOME)."""

    database_url: str | None = None

    def get_client(self) -> GiftflowStore:
        return GiftflowStore(database_url=self.database_url)


class MailerResource(dg.ConfigurableResource):
    """Team mails over SMTP (GIFTFLOW_SMTP_*), or .eml files in the outbox without a host."""

    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_allow_plaintext_login: bool = False
    mail_from: str = "giftflow@localhost"

    def get_client(self) -> Mailer:
        return Mailer(smtp_host=self.smtp_host, smtp_port=self.smtp_port, smtp_user=self.smtp_user,
                      smtp_password=self.smtp_password, smtp_starttls=self.smtp_starttls,
                      smtp_allow_plaintext_login=self.smtp_allow_plaintext_login, mail_from=self.mail_from)
