"""Sync files: one YAML file declares one reverse-ETL sync of a source table onto Stripe customers.

Pure: parses and validates the text it is given. A bad file fails with the file, the line and the problem.
"""

from __future__ import annotations

import re
import string
from typing import Literal

import sqlparse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from giftflow.domain.stripe_fields import (
    METADATA_MAX_KEY_LEN,
    METADATA_MAX_KEYS,
    TAX_ID_TYPES,
)
from giftflow.domain.yaml_files import line_in, parse_yaml_model

RESERVED = "giftcard"  # giftcard.yaml beside this file, loaded by the gift-card sync, not by load_folder
_DB_URL = re.compile(r"^[\w+]+://")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CRON = re.compile(r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$")


class SyncSpecError(ValueError):
    """A sync file that cannot be used, with file and line in the message."""


class SyncSourceError(SyncSpecError):
    """A sync's source that cannot be read at run time (missing file or column, bad url), with file and line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvRef(_Model):
    """`url: {env: NAME}`: the URL is read from an environment variable at run time, so no password is in git."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class Source(_Model):
    """Exactly one of: a CSV or Parquet file (inside the sync file's folder), one read-only SELECT (over `url`,
    or over giftflow's store when `url` is absent), or an upstream Dagster asset yielding a DataFrame."""

    csv: str | None = None
    parquet: str | None = None
    sql: str | None = None
    url: str | EnvRef | None = None
    asset: str | None = None

    @field_validator("csv", "parquet")
    @classmethod
    def _path_template(cls, value: str | None) -> str | None:
        # str.format on a path from the file: {partition} only, so `{0}` or `{partition.__class__}` cannot run.
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value or "") if f is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid file path template: {exc}") from None
        if any(f != "partition" or spec or conv for f, spec, conv in fields):
            raise ValueError("a file path may contain {partition} and no other {...} field")
        return value

    @field_validator("sql")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Comments and a trailing `;` are fine; a second statement (`...; COMMIT; DELETE ...`) is not.
        statements = [st for st in sqlparse.parse(value) if st.token_first(skip_ws=True, skip_cm=True) is not None]
        if len(statements) != 1:
            raise ValueError(f"one SELECT statement only, found {len(statements)} statements")
        if (kind := statements[0].get_type()) != "SELECT":
            raise ValueError(f"only a SELECT may run here, not {kind}")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value):
        # The shape SQLAlchemy's URL parser starts with; the adapter parses it whole when it connects. The message
        # never repeats the URL: it may hold a password.
        if isinstance(value, str) and not _DB_URL.match(value):
            raise ValueError("not a SQLAlchemy URL (e.g. postgresql+psycopg2://user@host/db, or {env: NAME})")
        return value

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


class PromotionCodeMap(_Model):
    """A promotion code restricted to the customer: the coupon and the code to create come from columns, each code
    redeemable `max_redemptions` times (explicit: `coupon:` alone applies the coupon as the customer's discount)."""

    coupon: str
    code: str
    max_redemptions: int = Field(default=1, ge=1)


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
    coupon: str | None = None  # applied to the customer as its discount (see adapters/stripe.py)
    promotion_code: PromotionCodeMap | None = None
    address: AddressMap | None = None
    shipping: ShippingMap | None = None
    metadata: MetadataMap | None = None

    def columns(self) -> dict[str, str]:
        """Flat field path ("shipping.address.city", "metadata.tier", "tax_id.value") -> source column."""
        out = {
            k: getattr(self, k)
            for k in ("id", "email", "name", "phone", "description", "balance", "source", "coupon")
            if getattr(self, k)
        }
        if self.address:
            out |= {f"address.{k}": v for k, v in self.address.model_dump().items() if v}
        if self.shipping:
            dump = self.shipping.model_dump()
            out |= {f"shipping.{k}": dump.pop(k) for k in ("name", "phone") if dump.get(k)}
            out |= {f"shipping.address.{k}": v for k, v in dump.items() if v}
        if self.promotion_code:
            out["promotion_code.coupon"] = self.promotion_code.coupon
            out["promotion_code.code"] = self.promotion_code.code
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
    # Where the file and its source are, for run-time messages (set by parse_sync).
    _file: str = PrivateAttr("<sync>")
    _lines: dict[str, int | None] = PrivateAttr(default_factory=dict)

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

    def where(self, key: str = "source") -> str:
        """`file:line` of the source (or of `url`), to start a run-time error message with."""
        return f"{self._file}:{self._lines.get(key) or self._lines.get('source') or '?'}"


def _json_key(data: dict) -> None:
    # `json` would shadow a pydantic BaseModel attribute: it is `json_column` inside the model.
    metadata = (data.get("mapping") or {}).get("metadata")
    if isinstance(metadata, dict) and "json" in metadata:
        metadata["json_column"] = metadata.pop("json")


def parse_sync(text: str, source: str = "<sync>") -> SyncSpec:
    """Parse and validate one sync file; a SyncSpecError names the file, the line and the problem."""
    spec = parse_yaml_model(
        text,
        source,
        SyncSpec,
        SyncSpecError,
        shape="a sync file is a mapping with version, name, source, identifier, mapping",
        prepare=_json_key,
        loc_part=lambda p: "json" if p == "json_column" else p,
    )
    spec._file = source
    spec._lines = {
        "source": line_in(text, ("source", spec.source.kind)),
        "url": line_in(text, ("source", "url")),
        "name": line_in(text, ("name",)),
    }
    return spec
