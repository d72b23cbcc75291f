"""Sync files: one YAML file declares one reverse-ETL sync of a source table onto Stripe customers.

Pure: parses and validates the text it is given. A bad file fails with the file, the line and the problem.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
import sqlparse
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from giftflow.core.yaml_files import line_in, parse_yaml_model
from giftflow.syncs.stripe_fields import METADATA_MAX_KEY_LEN, METADATA_MAX_KEYS, TAX_ID_TYPES

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "sync_definitions"
RESERVED = "giftcard"  # giftcard.yaml beside this file, loaded by the gift-card sync, not by load_folder
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
        if isinstance(value, str):
            try:
                sa.engine.make_url(value)
            except sa.exc.ArgumentError:  # its message repeats the URL, password included
                raise ValueError("not a SQLAlchemy URL (e.g. postgresql+psycopg2://user@host/db, or {env: NAME})") \
                    from None
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
    spec = parse_yaml_model(text, source, SyncSpec, SyncSpecError,
                            shape="a sync file is a mapping with version, name, source, identifier, mapping",
                            prepare=_json_key, loc_part=lambda p: "json" if p == "json_column" else p)
    spec._file = source
    spec._lines = {"source": line_in(text, ("source", spec.source.kind)), "url": line_in(text, ("source", "url")),
                   "name": line_in(text, ("name",))}
    return spec


def source_path(spec: SyncSpec, base: Path, partition: str | None = None) -> Path:
    """The file a csv/parquet source reads, which must lie inside the sync file's folder once resolved (symlinks
    followed): a sync file cannot read /proc/self/environ, ../secrets or a link pointing out of its folder."""
    template = getattr(spec.source, spec.source.kind)
    root = base.resolve()
    path = (root / template.format(partition=partition or "2024-01-01")).resolve()
    if not path.is_relative_to(root):
        raise SyncSourceError(f"{spec.where()}: {spec.source.kind} {template!r}: a source file must be inside "
                              f"the sync file's folder {root} (symlinks included)")
    return path


def load_sync(path: str | Path) -> tuple[SyncSpec, Path]:
    """A sync file and the folder its relative paths are relative to (its source file checked to be inside)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SyncSpecError(f"{path}: cannot read the sync file: {exc.strerror}") from None
    spec = parse_sync(text, str(path))
    if spec.source.kind in ("csv", "parquet"):
        source_path(spec, path.parent)
    return spec, path.parent


@dataclass(frozen=True)
class BrokenSync:
    """A sync file that does not load: it becomes an asset `sync_<name>` that fails with `error`."""

    name: str
    path: Path
    error: str

    @property
    def asset_name(self) -> str:
        return f"sync_{self.name}"


def _name_of_broken(path: Path, text: str) -> str:
    # The name the file declares where it can be read (the asset the user expects), else one from the file name.
    try:
        name = (yaml.safe_load(text) or {}).get("name")
    except (yaml.YAMLError, AttributeError):
        name = None
    if isinstance(name, str) and _NAME.match(name):
        return name
    stem = re.sub(r"[^a-z0-9_]", "_", path.stem.lower())
    return (stem if stem[:1].isalpha() else "x" + stem)[:60]


def scan_folder(folder: str | Path | None = None) -> tuple[list[tuple[SyncSpec, Path]], list[BrokenSync]]:
    """Every `*.yaml` sync file of `folder` (default: the package's sync_definitions): those that load, names
    unique, and those that do not, each with its error; one bad file does not stop the others."""
    folder = Path(folder) if folder else DEFAULT_FOLDER
    if not folder.is_dir():
        raise SyncSpecError(f"{folder}: no such folder of sync files")
    loaded, failed, seen = [], [], {}
    for path in sorted(folder.glob("*.y*ml")):
        try:
            spec, base = load_sync(path)
            if spec.name == RESERVED:
                raise SyncSpecError(f"{spec.where('name')}: the sync name {RESERVED!r} is the gift-card sync's (its "
                                    "reports and created ids are kept under it); choose another")
            if spec.name in seen:
                raise SyncSpecError(f"{spec.where('name')}: sync name {spec.name!r} is already used by "
                                    f"{seen[spec.name]}")
        except SyncSpecError as exc:
            failed.append((path, str(exc)))
            continue
        seen[spec.name] = path
        loaded.append((spec, base))
    broken = []
    for path, error in failed:
        try:
            name = _name_of_broken(path, path.read_text())
        except OSError:
            name = _name_of_broken(path, "")
        if name in seen or name == RESERVED:
            name = f"{name}_{len(seen) + len(broken)}"
        seen[name] = path
        broken.append(BrokenSync(name, path, error))
        logging.getLogger(__name__).warning("sync file does not load, its asset sync_%s will fail: %s", name, error)
    return loaded, broken


def load_folder(folder: str | Path | None = None) -> list[tuple[SyncSpec, Path]]:
    """Every sync file of `folder`; the first one that does not load raises its SyncSpecError."""
    loaded, broken = scan_folder(folder)
    if broken:
        raise SyncSpecError(broken[0].error)
    return loaded
