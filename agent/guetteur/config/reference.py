"""Generates the configuration reference (docs/config-reference.md) from the config models, so the
documentation cannot drift from what the agent accepts."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from guetteur.config.gateway import GuetteurConfig


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _rows(model: type[BaseModel], prefix: str, out: list[tuple[str, str, str, str]]) -> None:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if field.is_required():
            default = "**required**"
        elif field.default_factory is not None or field.default is PydanticUndefined:
            default = ""
        else:
            default = f"`{field.default!r}`" if field.default is not None else "`null`"
        out.append((path, _type_name(field.annotation), default, field.description or ""))
        origin = typing.get_origin(field.annotation)
        for sub in _models_in(field.annotation):
            is_list = origin is list or any(
                typing.get_origin(a) is list for a in typing.get_args(field.annotation)
            )
            _rows(sub, f"{path}[]." if is_list else f"{path}.", out)


def config_reference(
    model: type[BaseModel] = GuetteurConfig,
    title: str = "Configuration reference",
    command: str = "guetteur config",
) -> str:
    rows: list[tuple[str, str, str, str]] = []
    _rows(model, "", rows)
    lines = [
        f"# {title}",
        "",
        f"Generated from the config models by `{command} reference`; do not edit by hand.",
        "Unknown keys are refused. Any string may be `${env:NAME}`, `${file:/path}` or",
        f"`${{secret:NAME}}` (a key of `secrets_file`). Check a file with `{command} check FILE`.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, type_name, default, desc in rows:
        escaped = type_name.replace("|", "\\|")
        lines.append(f"| `{path}` | {escaped} | {default} | {desc} |")
    return "\n".join(lines) + "\n"
