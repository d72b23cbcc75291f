"""Run-wide switches that are not credentials: sync mode, dry run, refunds, rules, team address."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def env_bool(name: str, default: bool = False) -> bool:
    """A boolean environment variable; anything but true/false is an error, not a silent default."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(f"{name} must be true or false, not {raw!r}")
    return text in _TRUE


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    """How giftflow behaves (GIFTFLOW_* variables, see the README)."""

    sync_mode: Literal["update", "upsert"] = Field(
        default="update", description="update: existing customers only; upsert: also create missing ones")
    dry_run: bool = Field(default=False, description="plan and show everything, write nothing, send nothing")
    customer_mirror_max_age_s: int = Field(
        default=0, ge=0, description="reuse the Stripe customer mirror when refreshed this recently")
    refunds_enabled: bool = Field(default=False, description="let the workflows refund (else: 'would refund')")
    rules_path: str | None = Field(default=None, description="rules file replacing the default rules")
    team_email: str | None = Field(default=None, description="where team mails go")

    @classmethod
    def from_env(cls) -> Settings:
        mode = os.environ.get("GIFTFLOW_SYNC_MODE", "update").strip().lower()
        if mode not in ("update", "upsert"):
            raise ValueError(f"GIFTFLOW_SYNC_MODE must be update or upsert, not {mode!r}")
        return cls(
            sync_mode="upsert" if mode == "upsert" else "update",
            dry_run=env_bool("GIFTFLOW_DRY_RUN"),
            customer_mirror_max_age_s=int(os.environ.get("GIFTFLOW_CUSTOMER_MIRROR_MAX_AGE_S", "0")),
            refunds_enabled=env_bool("GIFTFLOW_REFUNDS_ENABLED"),
            rules_path=os.environ.get("GIFTFLOW_RULES") or None,
            team_email=os.environ.get("GIFTFLOW_TEAM_EMAIL") or None,
        )
