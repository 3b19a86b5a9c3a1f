"""Configuration: per-detector options, ``select``, ``ignore`` and ``fail-on``.

Read from ``[tool.tunescope]`` of a ``pyproject.toml`` or from a
``tunescope.toml`` (same keys, at its top level or under ``[tool.tunescope]``),
found by walking up from the runs directory (then from the working directory), or from an explicit ``--config FILE``::

    [tool.tunescope]
    select = ["TS0", "TS1"]       # ids or id prefixes; default: all detectors
    ignore = ["TS103"]
    fail-on = "warning"           # error (default), warning or never

    [tool.tunescope.TS101]        # options of one detector (tunescope explain TS101)
    z = 8.0

    [tool.tunescope.ingest]       # keys of home-made logs, where guessing is wrong
    step = "train/iter"           # a key or a list of keys, tried in order
    loss = ["train/ce", "loss"]
    metrics = { "lr_0" = "lr" }   # other keys -> canonical step columns

    [tool.tunescope.groups]       # sibling groups, where the automatic grouping is wrong
    qwen-sweep = ["sweep-*", "baseline"]   # run ids or glob patterns

Unknown keys and values of the wrong type are a :class:`ConfigError` that
names the file and the key.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.errors import ConfigError
from tunescope.suggest import did_you_mean

FAIL_ON = ("error", "warning", "never")
_TOP_KEYS = {"select", "ignore", "fail-on", "ingest", "groups"}
_INGEST_KEYS = {"step", "loss", "metrics"}


@dataclass
class Config:
    """What a configuration file says (everything optional)."""

    path: Path | None = None
    """The file it came from (None: defaults)."""
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    fail_on: str | None = None
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Raw option tables per detector id."""
    ingest: dict[str, Any] = field(default_factory=dict)
    """``[tool.tunescope.ingest]``: ``step`` and ``loss`` (lists of keys) and
    ``metrics`` (key -> canonical column) for logs whose keys are not guessed right."""
    groups: dict[str, list[str]] = field(default_factory=dict)
    """``[tool.tunescope.groups]``: sibling groups by name, each a list of run
    ids or glob patterns, for when the automatic grouping is wrong."""

    def where(self, key: str) -> str:
        return f"{self.path}: {key}" if self.path else key


def _toml_load(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


FORMS = (
    "a pyproject.toml takes tunescope's keys under [tool.tunescope]; "
    "a tunescope.toml takes them at the top level or under [tool.tunescope]"
)


def _section(path: Path) -> dict[str, Any] | None:
    """The tunescope table of ``path`` (None: a pyproject.toml without one).
    A ``tunescope.toml`` may hold its keys at the top level or, as pasted from
    a ``pyproject.toml``, under ``[tool.tunescope]``."""
    data = _toml_load(path)
    tool = data.get("tool")
    if path.name == "pyproject.toml":
        return tool.get("tunescope") if isinstance(tool, dict) else None
    if tool is None:
        return data
    if not isinstance(tool, dict) or set(tool) != {"tunescope"}:
        raise ConfigError(f"{path}: tool: unknown key ({FORMS})")
    if len(data) > 1:
        raise ConfigError(
            f"{path}: keys both at the top level and under [tool.tunescope]; keep one form ({FORMS})"
        )
    table = tool["tunescope"]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.tunescope: expected a table ({FORMS})")
    return table


def find_config(starts: Iterable[Path]) -> Path | None:
    """The first ``tunescope.toml``, or ``pyproject.toml`` with a
    ``[tool.tunescope]`` table, walking up from each start directory in turn."""
    for start in starts:
        d = start.resolve()
        if d.is_file():
            d = d.parent
        for folder in (d, *d.parents):
            own = folder / "tunescope.toml"
            if own.is_file():
                return own
            py = folder / "pyproject.toml"
            if py.is_file() and _section(py) is not None:
                return py
    return None


def load_config(explicit: str | Path | None = None, starts: Iterable[Path] = ()) -> Config:
    """Read ``explicit`` (it must exist) or the file found from ``starts``;
    defaults when there is none."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
    else:
        found = find_config([*starts, Path.cwd()])
        if found is None:
            return Config()
        path = found
    table = _section(path)
    if table is None:
        raise ConfigError(f"{path}: no [tool.tunescope] table ({FORMS})")
    return parse_config(table, path)


def parse_config(table: dict[str, Any], path: Path | None = None) -> Config:
    cfg = Config(path=path)
    for key, value in table.items():
        if key in ("select", "ignore"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{cfg.where(key)}: expected a list of detector ids")
            ids = normalise_ids(value)
            if key == "select":
                cfg.select = ids
            else:
                cfg.ignore = ids
        elif key == "fail-on":
            if value not in FAIL_ON:
                raise ConfigError(f"{cfg.where(key)}: expected one of {', '.join(FAIL_ON)}")
            cfg.fail_on = value
        elif key == "ingest":
            cfg.ingest = _ingest_table(value, cfg)
        elif key == "groups":
            cfg.groups = _groups_table(value, cfg)
        elif isinstance(value, dict) and key.upper().startswith("TS"):
            cfg.detectors[key.upper()] = value
        else:
            known = ", ".join(sorted(_TOP_KEYS))
            raise ConfigError(
                f"{cfg.where(key)}: unknown key{did_you_mean(key, _TOP_KEYS)} "
                f"(expected {known}, or a detector table like TS101)"
            )
    return cfg


def _ingest_table(value: Any, cfg: Config) -> dict[str, Any]:
    from tunescope.schema import METRIC_NAMES

    if not isinstance(value, dict):
        raise ConfigError(f"{cfg.where('ingest')}: expected a table")
    out: dict[str, Any] = {}
    for key, v in value.items():
        where = cfg.where(f"ingest.{key}")
        if key in ("step", "loss"):
            items = [v] if isinstance(v, str) else v
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{where}: expected a key or a list of keys")
            out[key] = items
        elif key == "metrics":
            if not isinstance(v, dict) or not all(isinstance(i, str) for i in v.values()):
                raise ConfigError(f"{where}: expected a table of key = column")
            for src, col in v.items():
                if col not in METRIC_NAMES:
                    raise ConfigError(
                        f"{where}.{src}: {col!r} is not a step column "
                        f"(columns: {', '.join(METRIC_NAMES)})"
                    )
            out[key] = dict(v)
        else:
            known = ", ".join(sorted(_INGEST_KEYS))
            raise ConfigError(f"{where}: unknown key (expected {known})")
    return out


def _groups_table(value: Any, cfg: Config) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"{cfg.where('groups')}: expected a table of name = [run ids or patterns]"
        )
    for name, pats in value.items():
        if not isinstance(pats, list) or not all(isinstance(p, str) for p in pats):
            raise ConfigError(
                f"{cfg.where(f'groups.{name}')}: expected a list of run ids or patterns"
            )
    return {name: list(pats) for name, pats in value.items()}


# Detector ids are written as a linter's rule ids: ids or id prefixes, in any
# case (selection itself: tunescope.detectors.selection).


def normalise_ids(entries: Iterable[str]) -> list[str]:
    """Detector ids or id prefixes as written (``ts1 ``) in one form (``TS1``)."""
    return [e.strip().upper() for e in entries]


def coerce(value: Any, hint: Any, where: str, *, text: bool = False) -> Any:
    """``value`` as the type ``hint`` says, or ``ConfigError`` naming ``where``.

    TOML values are typed already: by default a string is never a number.
    With ``text``, values written as text are read as well (a ``--set KEY=VALUE``
    string, a YAML scalar): ``"true"``, ``"7"``, ``"a,b"``, ``"[a, b]"``,
    ``"{k: v}"``, ``"null"``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    s = value.strip() if text and isinstance(value, str) else None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if s is not None and s.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return s.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, float) and value.is_integer():
            return int(value)
        if s is not None and s.lstrip("+-").isdigit():
            return int(s)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if s is not None:
            try:
                return float(s)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if text and isinstance(value, int | float | bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple) and args:
        if s is not None:
            value = _yaml_value(s, where) if s.startswith("[") else s.split(",")
            value = value if isinstance(value, list) else [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [coerce(v, args[0], where, text=text) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if s is not None and s.startswith("{"):
            value = _yaml_value(s, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, type(int | None)):  # Optional[X] and X | None
        is_null = value is None or (s is not None and s.lower() in ("null", "none", "~"))
        if is_null and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if s is not None:  # "[...]" is a list and "{...}" a mapping before it is text
            first = list if s.startswith("[") else dict if s.startswith("{") else None
            options.sort(key=lambda a: typing.get_origin(a) is not first)
        for a in options:
            try:
                return coerce(value, a, where, text=text)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: unexpected value {value!r}")
    return value


def _yaml_value(s: str, where: str) -> Any:
    """A flow-style YAML value (``[a, b]``, ``{k: v}``) written on a command line."""
    import yaml

    try:
        return yaml.safe_load(s)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: not valid YAML: {s!r}") from None
