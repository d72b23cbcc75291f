"""YAML files checked against a pydantic model, with errors that name the file, the line and the problem."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _keys_of(model: type[BaseModel], seen: set | None = None) -> set[str]:
    """Every field name and alias in `model` and the models nested in it: what a misspelt key may have meant."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys |= {name} | ({field.alias} if isinstance(field.alias, str) else set())
        stack = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                keys |= _keys_of(tp, seen)
            stack += typing.get_args(tp)
    return keys


def _did_you_mean(key: Any, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(str(key), sorted(_keys_of(model)), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def line_in(text: str, loc: tuple) -> int | None:
    """The line of the YAML node at `loc` (keys and indexes) in `text`, for messages about a valid file."""
    try:
        return _line_of(yaml.compose(text), loc)
    except yaml.YAMLError:
        return None


def parse_yaml_model(
    text: str,
    source: str,
    model: type[M],
    error: type[Exception],
    *,
    shape: str,
    prepare: Callable[[dict], None] | None = None,
    loc_part: Callable[[Any], Any | None] = lambda part: part,
) -> M:
    """Parse `text` and validate it as `model`; raise `error` with one `file:line: field: problem` per problem.

    `shape` describes the expected top level for a file that is not a mapping; `prepare` may rewrite the
    data before validation; `loc_part` maps a pydantic location part to the YAML key (None drops it).
    """
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{source}:1: {shape}")
    if prepare:
        prepare(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in (loc_part(part) for part in err["loc"]) if p is not None)
            where = ".".join(str(p) for p in loc) or "file"
            hint = _did_you_mean(loc[-1], model) if err["type"] == "extra_forbidden" and loc else ""
            problems.append(
                f"{source}:{_line_of(tree, loc) or '?'}: {where}: {err['msg'].removeprefix('Value error, ')}{hint}"
            )
        raise error("\n".join(problems)) from None
