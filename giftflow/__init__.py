"""giftflow: Dagster pipelines that keep Stripe in step with Cardivo and with Stripe itself.

`giftflow.defs` is the code location's Definitions. It is built on first access, not at import: importing
giftflow reads no environment, so a bad setting fails `defs` with its name, not every import of the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    defs: dg.Definitions

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from giftflow.orchestration.definitions import build_defs

        value = globals()["defs"] = build_defs()
        return value
    raise AttributeError(f"module 'giftflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])  # Dagster's loader finds Definitions by listing the module
