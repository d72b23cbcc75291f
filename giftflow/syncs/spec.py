"""Sync files: one YAML file declares one reverse-ETL sync of a source table onto Stripe customers.

Pure: parses and validates the text it is given. A bad file fails with the file, the line and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from giftflow.core.yaml_files import parse_yaml_model
from giftflow.syncs.stripe_fields import METADATA_MAX_KEY_LEN, METADATA_MAX_KEYS, TAX_ID_TYPES

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "sync_definitions"
RESERVED = "giftcard"  # giftcard.yaml beside this file, loaded by the gift-card sync, not by load_folder
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CRON = re.compile(r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$")


class SyncSpecError(ValueError):
    """A sync file that cannot be used, with file and line in the message."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """Exactly one of: a CSV or Parquet file (relative to the sync file), a SQL query (over `url`, or over
    giftflow's store when `url` is absent), or an upstream Dagster asset yielding a DataFrame."""

    csv: str | None = None
    parquet: str | None = None
    sql: str | None = None
    url: str | None = None
    asset: str | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("csv", "parquet", "sql", "asset") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of csv, parquet, sql, asset")
        if self.url and not self.sql:
            raise ValueError("url goes with sql")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("csv", "parquet", "sql", "asset") if getattr(self, k))


class AddressMap(_Model):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class ShippingMap(AddressMap):
    name: str | None = None
    phone: str | None = None


class TaxIdMap(_Model):
    """`value` is a column; the type is fixed (`type: eu_vat`) or read from a column (`type_column`)."""

    value: str
    type: str | None = None
    type_column: str | None = None

    @model_validator(mode="after")
    def _type(self):
        if (self.type is None) == (self.type_column is None):
            raise ValueError("give exactly one of type, type_column")
        if self.type is not None and self.type not in TAX_ID_TYPES:
            raise ValueError(f"{self.type!r} is not one of Stripe's tax-id types (e.g. eu_vat, gb_vat, us_ein)")
        return self


class MetadataMap(_Model):
    """`columns`: Stripe metadata key -> source column; `json`: a column holding a JSON object spread into keys."""

    columns: dict[str, str] = {}
    json_column: str | None = None

    @field_validator("columns")
    @classmethod
    def _limits(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > METADATA_MAX_KEYS:
            raise ValueError(f"Stripe allows at most {METADATA_MAX_KEYS} metadata keys")
        if long := [k for k in value if len(k) > METADATA_MAX_KEY_LEN or "[" in k or "]" in k]:
            raise ValueError(f"metadata key {long[0]!r}: at most {METADATA_MAX_KEY_LEN} characters, no brackets")
        return value


class Mapping(_Model):
    """Stripe customer field -> source column (nested for address, shipping, tax_id, metadata)."""

    id: str | None = None
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    description: str | None = None
    balance: str | None = None
    tax_id: TaxIdMap | None = None
    source: str | None = None
    coupon: str | None = None
    address: AddressMap | None = None
    shipping: ShippingMap | None = None
    metadata: MetadataMap | None = None

    def columns(self) -> dict[str, str]:
        """Flat field path ("shipping.address.city", "metadata.tier", "tax_id.value") -> source column."""
        out = {k: getattr(self, k) for k in ("id", "email", "name", "phone", "description", "balance", "source",
                                              "coupon") if getattr(self, k)}
        if self.address:
            out |= {f"address.{k}": v for k, v in self.address.model_dump().items() if v}
        if self.shipping:
            dump = self.shipping.model_dump()
            out |= {f"shipping.{k}": dump.pop(k) for k in ("name", "phone") if dump.get(k)}
            out |= {f"shipping.address.{k}": v for k, v in dump.items() if v}
        if self.tax_id:
            out["tax_id.value"] = self.tax_id.value
            if self.tax_id.type_column:
                out["tax_id.type"] = self.tax_id.type_column
        if self.metadata:
            out |= {f"metadata.{k}": v for k, v in self.metadata.columns.items()}
            if self.metadata.json_column:
                out["metadata.*"] = self.metadata.json_column
        return out


class SyncSpec(_Model):
    version: Literal[1]
    name: str
    description: str = ""
    source: Source
    mode: Literal["update", "upsert"] = "update"
    identifier: Literal["id", "email"]
    primary_key: str | None = None
    empty_values: Literal["leave", "clear"] = "leave"
    schedule: str | None = None
    partitions: Literal["daily"] | None = None
    # Mapped fields sent when a customer is created and never diffed afterwards (e.g. a sync that must not
    # rename or re-address customers it only tags).
    create_only: tuple[str, ...] = ()
    mapping: Mapping

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("name: lower-case letters, digits and _, starting with a letter")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not _CRON.match(value.strip()):
            raise ValueError(f"{value!r} is not a cron expression (five fields, or @hourly/@daily/...)")
        return value

    @model_validator(mode="after")
    def _identifier(self):
        column = getattr(self.mapping, self.identifier)
        if column is None:
            raise ValueError(f"identifier {self.identifier!r} needs mapping.{self.identifier}")
        mapped = {field.split(".")[0] for field in self.mapping.columns()} - {"id"}
        if stray := [f for f in self.create_only if f not in mapped]:
            raise ValueError(f"create_only: {stray[0]!r} is not a mapped field (mapped: {', '.join(sorted(mapped))})")
        return self

    @property
    def key_column(self) -> str:
        """The source column naming a row: primary_key, else the identifier's column."""
        return self.primary_key or getattr(self.mapping, self.identifier)

    @property
    def asset_name(self) -> str:
        return f"sync_{self.name}"


def _json_key(data: dict) -> None:
    # `json` would shadow a pydantic BaseModel attribute: it is `json_column` inside the model.
    metadata = (data.get("mapping") or {}).get("metadata")
    if isinstance(metadata, dict) and "json" in metadata:
        metadata["json_column"] = metadata.pop("json")


def parse_sync(text: str, source: str = "<sync>") -> SyncSpec:
    """Parse and validate one sync file; a SyncSpecError names the file, the line and the problem."""
    return parse_yaml_model(text, source, SyncSpec, SyncSpecError,
                            shape="a sync file is a mapping with version, name, source, identifier, mapping",
                            prepare=_json_key, loc_part=lambda p: "json" if p == "json_column" else p)


def load_sync(path: str | Path) -> tuple[SyncSpec, Path]:
    """A sync file and the folder its relative paths are relative to."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SyncSpecError(f"{path}: cannot read the sync file: {exc.strerror}") from None
    return parse_sync(text, str(path)), path.parent


def load_folder(folder: str | Path | None = None) -> list[tuple[SyncSpec, Path]]:
    """Every `*.yaml` sync file of `folder` (default: the package's sync_definitions), names unique."""
    folder = Path(folder) if folder else DEFAULT_FOLDER
    if not folder.is_dir():
        raise SyncSpecError(f"{folder}: no such folder of sync files")
    loaded, seen = [], {}
    for path in sorted(folder.glob("*.y*ml")):
        spec, base = load_sync(path)
        if spec.name == RESERVED:
            raise SyncSpecError(f"{path}: the sync name {RESERVED!r} is the gift-card sync's (its reports and "
                                "created ids are kept under it); choose another")
        if spec.name in seen:
            raise SyncSpecError(f"{path}: sync name {spec.name!r} is already used by {seen[spec.name]}")
        seen[spec.name] = path
        loaded.append((spec, base))
    return loaded
