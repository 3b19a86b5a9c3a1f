"""Exit codes and the exception hierarchy.

Library errors (duckdb, json, pyarrow, OS errors) are translated at the boundary
into these, with the file, the line and what to do. The CLI prints their
message on stderr and exits with :class:`ExitCode` values; never a traceback for
a user's mistake.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, as linters use them."""

    OK = 0
    """Nothing at or above the failure threshold."""
    FINDINGS = 1
    """Findings at or above ``--fail-on`` (analyze), the gate failed, or
    (``watch --once``) an alert could not be delivered."""
    USAGE = 2
    """Usage, configuration or input error; the message says what to fix."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C."""


class TunescopeError(Exception):
    """Base class of every error tunescope reports to a user."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(TunescopeError):
    """A command was called with arguments that cannot work."""


class ConfigError(TunescopeError):
    """A configuration file or value is invalid."""


class InputError(TunescopeError):
    """A log file, directory or runs root cannot be read."""


class QueryError(TunescopeError):
    """A SQL statement failed; the message is DuckDB's."""


class StoreError(TunescopeError):
    """The cache of ingested segments cannot be written or read."""


class CacheChanged(StoreError):
    """Files of the cache went away or were cut short while a command read
    them (another process rebuilt the cache, or they were deleted): opening
    the store again (an ingest rebuilds what is missing) usually works."""


class TrainError(TunescopeError):
    """The bundled trainer cannot start with this configuration or environment."""
