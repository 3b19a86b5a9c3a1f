"""Which detectors run, and with which options.

Selection works as a linter's: ids or id prefixes (``TS1`` = every TS1xx), in
any case, from the configuration's ``select``/``ignore`` lists and the command
line's ``--select``/``--ignore`` alike. The command line's ``select`` replaces
the configuration's; its ``ignore`` adds to it. A detector's options are its
``Options`` dataclass with the configuration's table for it applied and
type-checked (:func:`build_options`).

Every check here raises before any work is done: a ``ConfigError`` naming the
file and the key, or a ``UsageError`` naming the option.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from tunescope.config import Config, coerce, normalise_ids
from tunescope.errors import ConfigError, UsageError
from tunescope.suggest import did_you_mean

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from tunescope.detectors.base import DetectorModule

Opts = TypeVar("Opts", bound="DataclassInstance")


def all_detectors() -> list[DetectorModule]:
    """The registry's detectors, in order (imported when first needed: they
    pull in numpy and polars)."""
    from tunescope.detectors.registry import DETECTORS

    return list(DETECTORS)


def detector_ids() -> list[str]:
    return [d.ID for d in all_detectors()]


def get_detector(detector_id: str) -> DetectorModule:
    """The detector module with this id (case-insensitive); UsageError listing the ids."""
    want = detector_id.strip().upper()
    for d in all_detectors():
        if want == d.ID:
            return d
    raise UsageError(f"unknown detector {detector_id!r}; known: {', '.join(detector_ids())}")


def unmatched_ids(entries: Iterable[str], known: Iterable[str]) -> list[str]:
    """The ids or id prefixes among ``entries`` that name no detector in ``known``."""
    known = list(known)
    return [e for e in entries if not any(k.startswith(e) for k in known)]


def is_selected(detector_id: str, select: Iterable[str] | None, ignore: Iterable[str]) -> bool:
    """Whether a detector runs: in ``select`` (every detector when it is None)
    and not in ``ignore``."""
    if select is not None and not any(detector_id.startswith(s) for s in select):
        return False
    return not any(detector_id.startswith(i) for i in ignore)


def _split(ids: Iterable[str] | str | None) -> list[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str):
        ids = ids.split(",")
    return normalise_ids(i for i in ids if i.strip())


def select_detectors(
    select: Iterable[str] | str | None = None,
    ignore: Iterable[str] | str | None = None,
    config: Config | None = None,
) -> list[DetectorModule]:
    """Detectors chosen by ids or id prefixes (``TS1`` = every TS1xx), as a
    linter selects rules. ``select`` replaces the config's; ``ignore`` adds to it."""
    detectors = all_detectors()
    known = [d.ID for d in detectors]
    cfg = config or Config()
    sel = _split(select)
    ign = _split(ignore) or []
    for label, entries in (("--select", sel or []), ("--ignore", ign)):
        for e in unmatched_ids(entries, known):
            raise UsageError(f"{label}: {e!r} matches no detector; known: {', '.join(known)}")
    if sel is None:
        sel = cfg.select
    ign = [*cfg.ignore, *ign]
    return [d for d in detectors if is_selected(d.ID, sel, ign)]


def check_detector_ids(cfg: Config, ids: Iterable[str]) -> None:
    """Every detector table and select/ignore entry must name a known detector."""
    known = sorted(ids)
    for did in cfg.detectors:
        if did not in known:
            raise ConfigError(f"{cfg.where(did)}: unknown detector id (known: {', '.join(known)})")
    for key, entries in (("select", cfg.select or []), ("ignore", cfg.ignore)):
        for e in unmatched_ids(entries, known):
            raise ConfigError(
                f"{cfg.where(key)}: {e!r} matches no detector (known: {', '.join(known)})"
            )


def build_options(cfg: Config, detector_id: str, options_cls: type[Opts]) -> Opts:
    """The ``Options`` of one detector with the configured overrides applied
    and type-checked."""
    raw = cfg.detectors.get(detector_id, {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            keys = sorted(f.replace("_", "-") for f in fields)
            raise ConfigError(
                f"{cfg.where(f'{detector_id}.{key}')}: unknown option{did_you_mean(key, keys)} "
                f"(options: {', '.join(keys)})"
            )
        kwargs[name] = coerce(value, hints[name], cfg.where(f"{detector_id}.{key}"))
    try:
        return options_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.where(detector_id)}: {e}") from None


def validate_config(config: Config) -> None:
    """Every detector table names a known detector and holds valid options:
    a ConfigError naming the file and key, before any work is done."""
    check_detector_ids(config, detector_ids())
    for det in all_detectors():
        build_options(config, det.ID, det.Options)
