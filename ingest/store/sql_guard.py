"""The wall in front of a user's SQL: every statement is classified by
DuckDB's own parser, and anything that is not a query (writes, copies,
exports, attaches, installs, loads, settings, calls) is refused with one line
that names the statement and what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from tunescope.errors import QueryError, UsageError

# PRAGMAs a user's SQL may run: they only read the catalog.
_READ_ONLY_PRAGMAS = frozenset(
    {"show_tables", "show_tables_expanded", "table_info", "show", "database_size", "version"}
)


_ALLOWED = (
    "SQL here is read-only (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, PIVOT, "
    "EXPLAIN of a query, PRAGMA " + "/".join(sorted(_READ_ONLY_PRAGMAS)) + ")"
)


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


_CARET_LINE = re.compile(r"^(LINE (\d+): )(.*)$")


def one_line(e: BaseException) -> str:
    """DuckDB's message on one line. A parser error shows the statement's line
    with a caret under the place (``LINE 1: SELEC 1`` then ``^^^^^``): that
    becomes ``(line 1, column 1: SELEC 1)``."""
    lines = [line.rstrip() for line in str(e).strip().splitlines() if line.strip()]
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _CARET_LINE.match(lines[i])
        caret = lines[i + 1] if i + 1 < len(lines) else ""
        if m and caret.strip() and set(caret.strip()) == {"^"}:
            column = caret.index("^") - len(m.group(1)) + 1
            out.append(f"(line {m.group(2)}, column {max(column, 1)}: {m.group(3).strip()})")
            i += 2
            continue
        out.append(" ".join(lines[i].split()))
        i += 1
    return " ".join(out) or type(e).__name__


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= 60 else flat[:59] + "…")


def _tokens(text: str) -> list[str]:
    """The words and symbols of one statement as DuckDB's own tokenizer splits
    them, comments (and optimizer hints, which are comments) left out."""
    raw = text.encode("utf-8")  # the tokenizer's positions are byte offsets
    toks = duckdb.tokenize(text)
    out = []
    for i, (pos, kind) in enumerate(toks):
        end = toks[i + 1][0] if i + 1 < len(toks) else len(raw)
        if kind != duckdb.token_type.comment:
            out.append(raw[pos:end].decode("utf-8", "replace").strip())
    return out


def _token_offsets(text: str) -> list[int]:
    """Character offsets of the non-comment tokens of ``text`` (see :func:`_tokens`)."""
    raw = text.encode("utf-8")
    return [
        len(raw[:pos].decode("utf-8", "replace"))
        for pos, kind in duckdb.tokenize(text)
        if kind != duckdb.token_type.comment
    ]


def _explained(text: str) -> str | None:
    """The statement an EXPLAIN [ANALYZE] [(options)] statement explains, or
    None when its shape is not that (refused, never guessed)."""
    words = [w.lower() for w in _tokens(text)]
    offsets = _token_offsets(text)
    if not words or words[0] != "explain":
        return None
    i = 1
    if i < len(words) and words[i] in ("analyze", "analyse"):
        i += 1
    if i < len(words) and words[i] == "(":
        depth = 0
        while i < len(words):
            depth += (words[i] == "(") - (words[i] == ")")
            i += 1
            if depth == 0:
                break
    if i >= len(words):
        return None
    return text[offsets[i] :]


def _refusal(text: str, kind: str, depth: int) -> str | None:
    """Why one statement may not run here, or None when it is a query."""
    words = [w.lower() for w in _tokens(text)]
    if kind == "SELECT":  # also WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, UNPIVOT
        return None
    if kind == "MULTI" and words[:1] == ["pivot"]:
        return None  # a PIVOT: a query plus a helper type for its columns
    if kind == "PRAGMA":
        name = words[1] if len(words) > 1 else ""
        if name in _READ_ONLY_PRAGMAS and "=" not in words:
            return None
        return f"PRAGMA {name or '?'} (not one that only reads)"
    if kind == "EXPLAIN" and depth < 4:
        inner = _explained(text)
        if inner is not None:
            try:
                stmts = duckdb.extract_statements(inner)
                kinds = [statement_kind(st) for st in stmts]
            except (duckdb.Error, ValueError):
                stmts, kinds = [], []
            if len(stmts) == 1:
                why = _refusal(stmts[0].query, kinds[0], depth + 1)
                return None if why is None else f"EXPLAIN of {why}"
        return "EXPLAIN of a statement that is not a query"
    return _SHOWN.get(kind, kind.replace("_", " "))


# Statement types DuckDB's parser names after one of several statements.
_SHOWN = {"LOAD": "INSTALL/LOAD", "SET": "SET/RESET/USE", "VACUUM": "VACUUM/ANALYZE"}


def statement_kind(stmt: Any) -> str:
    """The statement's type as DuckDB's parser names it (SELECT, COPY, ...);
    raises ValueError for a type this duckdb's Python API cannot name."""
    kind = stmt.type.name if hasattr(stmt.type, "name") else str(stmt.type)
    return kind.replace("StatementType.", "").replace("_STATEMENT", "")


def check_read_only(sql: str) -> list[Any]:
    """The statements of ``sql``, classified by DuckDB's parser; refuses
    (:class:`UsageError`, one line) any statement that is not a query: nothing
    that writes, copies, exports, attaches, installs, loads, sets or calls.
    EXPLAIN is judged by the statement it explains (ANALYZE runs it)."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"the SQL holds a byte that is not UTF-8 at character {e.start + 1}; "
            "pass the query as UTF-8 text"
        ) from None
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not statements:
        raise UsageError("no SQL statement given")
    for n, stmt in enumerate(statements, 1):
        try:
            kind = statement_kind(stmt)
        except ValueError:  # a statement type newer than this API (UPDATE EXTENSIONS)
            kind = "statement of a kind that is not a query"
        why = _refusal(stmt.query, kind, 0)
        if why is not None:
            where = f"statement {n} is" if len(statements) > 1 else "the statement is"
            raise UsageError(f"refused: {where} {why} {_snippet(stmt.query)}; {_ALLOWED}")
    return statements
