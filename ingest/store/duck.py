"""DuckDB helpers that every part of the tool opens and queries DuckDB through."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def connect_duckdb(database: str = ":memory:", config: dict[str, Any] | None = None) -> Any:
    """A new DuckDB connection that never downloads or loads extension code on
    its own (a ``read_json('https://...')`` would otherwise fetch httpfs).
    Every DuckDB the project opens goes through here."""
    import duckdb

    con = duckdb.connect(
        database,
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            **(config or {}),
        },
    )
    con.execute("SET enable_progress_bar = false")  # never a bar on the user's terminal
    return con


def fetch_arrow(con: Any, sql: str, params: Any = None) -> pa.Table:
    """The rows of a query as an Arrow table, without a DB-API copy (DuckDB 1.x and 2.x)."""
    rel = con.sql(sql, params=params)
    method = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return method()


def python_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The rows of ``table`` as tuples of Python values (by position: two
    columns may share a name). A column holding a value Python cannot (a
    timestamp or date of ``infinity``, a year past 9999) comes as DuckDB's own
    text for each of its values (``'infinity'``, ``'294247-01-10'``), never
    an exception."""
    columns = []
    for col in table.columns:
        try:
            columns.append(col.to_pylist())
        except (OverflowError, ValueError, pa.ArrowException):
            columns.append(_as_text(col))
    return list(zip(*columns, strict=True))


def _as_text(col: pa.ChunkedArray) -> list[str | None]:
    con = connect_duckdb()
    try:
        con.register("_col", pa.table({"v": col}))
        return [r[0] for r in con.execute("SELECT CAST(v AS VARCHAR) FROM _col").fetchall()]
    finally:
        con.close()
