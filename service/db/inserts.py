"""Bulk writes without SQLAlchemy's per-row work: rows go to the driver as positional values.
SQLite: through its executemany or as multi-row INSERTs (``Insert``). PostgreSQL: as one
``COPY ... FROM STDIN`` per table (``Copy``)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

from sqlalchemy import Column, Connection, Dialect, Table
from sqlalchemy.sql.schema import ScalarElementColumnDefault

_NEW = object()
W = TypeVar("W", "Insert", "Copy")


class _Columns:
    """How rows of one table become positional values: the columns in order, each one's
    Python-side default (for a partial row) and the dialect's bind processor."""

    def __init__(self, columns: list[Column[Any]], dialect: Dialect) -> None:
        keys = [c.key for c in columns]
        # every key present (the usual row): one C-level look-up for the whole row
        self._values: Callable[[dict[str, Any]], Any] = (
            operator.itemgetter(*keys) if len(keys) > 1 else (lambda row: (row[keys[0]],))
        )
        # a partial row: what is missing takes the column's Python-side scalar default
        self._defaults = [
            (c.key, c.default.arg if isinstance(c.default, ScalarElementColumnDefault) else None)
            for c in columns
        ]
        self._processors = [
            (i, proc)
            for i, c in enumerate(columns)
            if (proc := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]

    def _params(self, rows: list[dict[str, Any]], *, repeats: bool) -> list[tuple[Any, ...]]:
        """The rows as the driver takes them. ``repeats``: the rows repeat values (a table
        with several rows per answer: its decision rows share the answer's record id, and the
        decisions most answers get share their detail), each converted once per batch, found
        by identity (every value is held by its row until the batch is written, so no id is
        reused meanwhile)."""
        params: list[tuple[Any, ...]] = []
        done: dict[int, Any] | None = {} if repeats else None
        for row in rows:
            try:
                values = list(self._values(row))
            except KeyError:
                values = [row.get(key, default) for key, default in self._defaults]
            for i, proc in self._processors:
                value = values[i]
                if value is None:
                    continue
                if done is None:
                    values[i] = proc(value)
                    continue
                converted = done.get(id(value), _NEW)
                if converted is _NEW:
                    converted = done[id(value)] = proc(value)
                values[i] = converted
            params.append(tuple(values))
        return params


class Insert(_Columns):
    """One table's INSERT as the SQLite driver takes it (positional), with each column's bind
    processor and Python-side default: a batch goes to the driver without SQLAlchemy's
    per-execution parameter processing (~1 us per row per table; an answer under a policy
    bundle writes a dozen rows)."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = table.insert().compile(dialect=dialect)
        self.sql = compiled.string
        assert compiled.positiontup is not None, "a positional (qmark) dialect"
        columns = [table.c[compiled.binds[name].key] for name in compiled.positiontup]
        super().__init__(columns, dialect)
        # "INSERT INTO t (a, b) VALUES (?, ?)": the head and one row's group, for run_multirow
        head, _, group = self.sql.rpartition(" VALUES ")
        assert group == "(" + ", ".join(["?"] * len(columns)) + ")", self.sql
        self._head, self._group, self._width = head + " VALUES ", group, len(columns)
        self._max_params = dialect.insertmanyvalues_max_parameters

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The rows through the driver's executemany (one statement step per row)."""
        conn.exec_driver_sql(self.sql, self._params(rows, repeats=False))

    def run_multirow(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The rows as multi-row ``INSERT ... VALUES (...), (...)`` statements, as many rows
        per statement as SQLite's limit on bound parameters allows.

        The driver lets go of the GIL for each statement step and has to win it back from a
        busy event loop afterwards: a statement per row made a sealing run of 10,000 entries
        (and as many tree nodes) hold SQLite's write lock for seconds, with every answer's
        commit waiting behind it. Here it is a statement per few thousand rows."""
        if not rows:
            return
        per = max(1, self._max_params // self._width)
        params = self._params(rows, repeats=True)
        for start in range(0, len(params), per):
            chunk = params[start : start + per]
            sql = self._head + ", ".join([self._group] * len(chunk))
            conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))


class Copy(_Columns):
    """One table's rows into PostgreSQL as ``COPY table (columns) FROM STDIN``, each row's
    values adapted by psycopg (after the column's bind processor, as SQLAlchemy would):
    the writer alone measured 295-337 -> 156-163 us of CPU per answer of the finance bundle
    (ten rows) and 141 -> 103 with no policies, against SQLAlchemy's executemany, which
    psycopg runs as one prepared INSERT per row with Python work for each. Like ``Insert``,
    every column is listed: a key a row lacks takes its Python-side default or NULL."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        columns = list(table.columns)
        super().__init__(columns, dialect)
        preparer = dialect.identifier_preparer
        names = ", ".join(preparer.quote(c.name) for c in columns)
        self.sql = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"

    def run(self, conn: Connection, rows: list[dict[str, Any]], *, repeats: bool) -> None:
        """The rows in one COPY, on the connection's current transaction (``repeats``: as
        ``_params`` takes it)."""
        driver = conn.connection.driver_connection
        assert driver is not None, "a live connection"
        with driver.cursor() as cursor, cursor.copy(self.sql) as copy:
            for values in self._params(rows, repeats=repeats):
                copy.write_row(values)


class PerTable(dict[Table, W]):
    """Each table's ``Insert`` or ``Copy`` for one dialect, made when first asked for."""

    def __init__(self, make: Callable[[Table, Dialect], W], dialect: Dialect) -> None:
        super().__init__()
        self._make: Callable[[Table, Dialect], W] = make
        self._dialect = dialect

    def of(self, table: Table) -> W:
        found = self.get(table)
        if found is None:
            found = self[table] = self._make(table, self._dialect)
        return found
