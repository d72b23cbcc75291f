"""Thin Dagster resources: each holds an adapter's configuration and builds the adapter (`get_client()`).
Secrets arrive as `dg.EnvVar`, so Dagster resolves them at run time and never shows their values.

`settings_resource` hands the assets the one `Settings` object, with the dry run chosen per run: run config
`resources: {settings: {config: {dry_run: true}}}` or the run tag `giftflow/dry_run=true` (launchpad, backfill,
`dagster asset materialize --tags`) overrides GIFTFLOW_DRY_RUN for that run."""

from __future__ import annotations

import dagster as dg

from giftflow.adapters.cardivo import CardivoClient
from giftflow.adapters.mailer import Mailer
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.settings import BOOL_ALLOWED, Settings, missing_variable, parse_bool

DRY_RUN_TAG = "giftflow/dry_run"


class CardivoResource(dg.ConfigurableResource):
    """The Cardivo API (CARDIVO_API_BASE, CARDIVO_API_KEY)."""

    api_base: str | None = None
    api_key: str | None = None
    page_size: int = 100

    def get_client(self) -> CardivoClient:
        if not self.api_base or not self.api_key:
            name = "CARDIVO_API_BASE" if not self.api_base else "CARDIVO_API_KEY"
            raise dg.Failure(
                description=missing_variable(name, "this step (it calls Cardivo)"),
                metadata={"variable": name},
                allow_retries=False,
            )
        return CardivoClient(api_base=self.api_base, api_key=self.api_key, page_size=self.page_size)


class StripeResource(dg.ConfigurableResource):
    """Stripe (STRIPE_API_KEY, STRIPE_API_BASE), paced to one budget shared by every run."""

    api_key: str | None = None
    api_base: str | None = None
    max_requests_per_second: int = 20
    max_concurrent_writes: int = 8
    max_network_retries: int = 3
    rate_limit_db: str | None = None

    def get_client(self) -> StripeClient:
        if not self.api_key:
            raise dg.Failure(
                description=missing_variable("STRIPE_API_KEY", "this step (it calls Stripe)"),
                metadata={"variable": "STRIPE_API_KEY"},
                allow_retries=False,
            )
        return StripeClient(
            api_key=self.api_key,
            api_base=self.api_base,
            max_requests_per_second=self.max_requests_per_second,
            max_concurrent_writes=self.max_concurrent_writes,
            max_network_retries=self.max_network_retries,
            rate_limit_db=self.rate_limit_db,
        )


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
    outbox_dir: str | None = None

    def get_client(self) -> Mailer:
        return Mailer(
            smtp_host=self.smtp_host,
            smtp_port=self.smtp_port,
            smtp_user=self.smtp_user,
            smtp_password=self.smtp_password,
            smtp_starttls=self.smtp_starttls,
            smtp_allow_plaintext_login=self.smtp_allow_plaintext_login,
            mail_from=self.mail_from,
            outbox_dir=self.outbox_dir,
        )


def run_dry_run(settings: Settings, config_value: bool | None, tags: dict[str, str]) -> tuple[bool, str]:
    """This run's dry run and where it came from: run config, else the run tag, else GIFTFLOW_DRY_RUN."""
    if config_value is not None:
        return config_value, "run config resources.settings.config.dry_run"
    if DRY_RUN_TAG in tags:
        try:
            return parse_bool(tags[DRY_RUN_TAG]), f"run tag {DRY_RUN_TAG}"
        except ValueError:
            raise dg.Failure(
                description=f"run tag {DRY_RUN_TAG}={tags[DRY_RUN_TAG]!r} is not valid; allowed: {BOOL_ALLOWED}"
            ) from None
    return settings.dry_run, "GIFTFLOW_DRY_RUN"


def settings_resource(settings: Settings) -> dg.ResourceDefinition:
    """The assets' `settings`: `settings` with this run's dry run (see the module's docstring)."""

    @dg.resource(
        config_schema={
            "dry_run": dg.Field(
                dg.Noneable(bool),
                default_value=None,
                is_required=False,
                description=f"true: plan and show everything, write nothing, send nothing; overrides the run tag "
                f"{DRY_RUN_TAG} and GIFTFLOW_DRY_RUN (now {str(settings.dry_run).lower()}) for this run",
            )
        },
        description=f"giftflow's settings (README, Configuration). Dry run per run: run tag {DRY_RUN_TAG}=true "
        f"or this resource's dry_run config.",
    )
    def settings_for_run(init_context: dg.InitResourceContext) -> Settings:
        run = init_context.dagster_run
        dry_run, source = run_dry_run(
            settings, (init_context.resource_config or {}).get("dry_run"), dict(run.tags) if run is not None else {}
        )
        if (log := init_context.log) is not None:
            for notice in settings.notices:
                log.warning(notice)
            if dry_run != settings.dry_run:
                log.info(f"dry run {'on' if dry_run else 'off'} for this run ({source})")
        return settings.model_copy(update={"dry_run": dry_run})

    return settings_for_run
