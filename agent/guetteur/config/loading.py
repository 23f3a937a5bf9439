"""YAML → typed, validated configuration. Every error names its key path; all errors at once.

Secrets never sit in the main file if you do not want them there: any string value may be
``${env:NAME}`` (an environment variable), ``${file:/path}`` (a file's content, stripped) or
``${secret:NAME}`` (a key of the YAML mapping named by ``secrets_file``). Secret fields are
``SecretStr`` and print as ``**********``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ValidationError

from guetteur.config.gateway import GuetteurConfig

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every ``key.path: what was expected``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _path(loc: tuple[int | str, ...], skip: frozenset[str] = frozenset()) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in skip:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_problems(
    exc: ValidationError,
    unknown: str = "unknown key",
    missing: str | None = "required key is missing",
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Every pydantic error as ``key.path[2].name: sentence``, once each — the one wording of
    config files, provisioning files and command payloads. ``skip`` drops location parts that
    are not keys anybody wrote (union branch names)."""
    out: list[str] = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = unknown
        elif err["type"] == "missing" and missing is not None:
            msg = missing
        elif err["type"] == "key_path":  # a check across keys names the one at fault
            ctx = err.get("ctx") or {}
            prefix = _path(loc, skip) if loc else ""
            sub = str(ctx.get("path", ""))
            joined = f"{prefix}.{sub}" if prefix and not sub.startswith("[") else prefix + sub
            out.append(f"{joined}: {ctx.get('problem', msg)}")
            continue
        line = f"{_path(loc, skip)}: {msg}"
        if line not in out:
            out.append(line)
    return out


_REF = re.compile(r"^\$\{(env|file|secret):([^}]+)\}$")


def _resolve_refs(
    node: Any, loc: tuple[int | str, ...], secrets: dict[str, Any] | None, problems: list[str]
) -> Any:
    if isinstance(node, dict):
        return {k: _resolve_refs(v, (*loc, k), secrets, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, (*loc, i), secrets, problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        m = _REF.match(node)
        if not m:
            return node
        kind, name = m.groups()
        if kind == "env":
            if name not in os.environ:
                problems.append(f"{_path(loc)}: environment variable {name} is not set")
                return None
            return os.environ[name]
        if kind == "file":
            try:
                return Path(name).read_text().strip()
            except OSError as exc:
                problems.append(f"{_path(loc)}: cannot read secret file {name}: {exc.strerror}")
                return None
        if secrets is None:
            problems.append(f"{_path(loc)}: ${{secret:{name}}} used but no secrets_file is set")
            return None
        if name not in secrets:
            problems.append(f"{_path(loc)}: secret {name!r} is not in secrets_file")
            return None
        return str(secrets[name])
    return node


def validate_config(raw: Any, source: str = "config") -> GuetteurConfig:
    """Validate a parsed YAML tree. Raises ConfigError listing every problem."""
    return validate_model(GuetteurConfig, raw, source)


def validate_model(model: type[M], raw: Any, source: str = "config") -> M:
    """Validate a parsed YAML tree against any config model (the gateway's, the centre's):
    secret references resolved, every problem listed at once in a ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of keys to values"])
    problems: list[str] = []
    secrets: dict[str, Any] | None = None
    secrets_file = raw.get("secrets_file")
    if isinstance(secrets_file, str):
        try:
            loaded = yaml.safe_load(Path(secrets_file).read_text())
            if not isinstance(loaded, dict):
                problems.append(f"secrets_file: {secrets_file} is not a YAML mapping")
            else:
                secrets = loaded
        except OSError as exc:
            problems.append(f"secrets_file: cannot read {secrets_file}: {exc.strerror}")
        except yaml.YAMLError as exc:
            problems.append(f"secrets_file: {secrets_file} is not valid YAML: {exc}")
    resolved = _resolve_refs(raw, (), secrets, problems)
    try:
        config = model.model_validate(resolved)
    except ValidationError as exc:
        problems += validation_problems(exc)
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | os.PathLike[str]) -> GuetteurConfig:
    """Read and validate a YAML config file. Raises ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"(syntax): not valid YAML: {exc}"]) from None
    return validate_config(raw, source)


def redact_url(url: str) -> str:
    """A URL safe for logs: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
