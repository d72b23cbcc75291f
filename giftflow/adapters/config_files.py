"""giftflow's own configuration files on disk: the rules file, the sync files of a folder, and the gift-card
sync's configuration of the engine. Reads files; parsing and validation are the domain's."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from giftflow.adapters.sync_sources import source_path
from giftflow.domain.rules import RulesError, RulesFile, parse_rules
from giftflow.domain.sync_spec import (
    _NAME,
    RESERVED,
    SyncSpec,
    SyncSpecError,
    parse_sync,
)

PACKAGE = Path(__file__).resolve().parents[1]


DEFAULT_RULES = PACKAGE / "default_rules.yaml"


def load_rules(path: str | Path | None = None) -> RulesFile:
    path = Path(path) if path else DEFAULT_RULES
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


DEFAULT_FOLDER = PACKAGE / "sync_definitions"


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
    loaded: list[tuple[SyncSpec, Path]] = []
    failed: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.y*ml")):
        try:
            spec, base = load_sync(path)
            if spec.name == RESERVED:
                raise SyncSpecError(
                    f"{spec.where('name')}: the sync name {RESERVED!r} is the gift-card sync's (its "
                    "reports and created ids are kept under it); choose another"
                )
            if spec.name in seen:
                raise SyncSpecError(f"{spec.where('name')}: sync name {spec.name!r} is already used by {seen[spec.name]}")
        except SyncSpecError as exc:
            failed.append((path, str(exc)))
            continue
        seen[spec.name] = path
        loaded.append((spec, base))
    broken: list[BrokenSync] = []
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


SPEC_FILE = PACKAGE / "domain" / "giftcard_sync.yaml"


@cache
def giftcard_sync_spec(mode: str = "update") -> SyncSpec:
    """The gift-card sync's configuration of the sync engine, in `mode` (update or upsert)."""
    if mode not in ("update", "upsert"):
        raise ValueError(f"mode must be 'update' or 'upsert', not {mode!r}")
    return load_sync(SPEC_FILE)[0].model_copy(update={"mode": mode})
