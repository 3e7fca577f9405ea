"""The store writer's hot statements, run on the DB-API cursor of the batch's connection (and
the finalizer's per-recording reads and the web console's per-request read of who asks, on a
pooled connection's: :class:`Reading`).

Why not ``Connection.execute``: even with its compiled cache, SQLAlchemy builds an execution
context, result metadata and event dispatch for every statement, 15-50 µs each against the 2-5
µs SQLite takes to run one; the writer thread runs about twenty per call, and that was near
half of its CPU (``bench/daemon_load.py``, docs/performance.md). No library offers a cheaper
route to the same rows, so this one does the least that keeps them the same:

* the SQL is SQLAlchemy's own, compiled from the Core statement once per dialect (and, for an
  ``INSERT``, per set of columns given, as SQLAlchemy's cache does);
* every value goes through the column type's own bind processor (``UTCDateTime``, ``JSON``,
  SQLite's date format, psycopg's JSON wrapper), a column left out gets its Python default
  (as SQLAlchemy's "prefetch" does), and a returned row goes through the result processors;
* a DB-API error is raised as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``,
  …, with ``connection_invalidated`` and the connection invalidated on a disconnect), so the
  callers' handling is unchanged.

So a row written here is byte for byte the row ``Connection.execute`` writes, on SQLite and on
PostgreSQL (``tests/recorder/store/test_prepared.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

_Proc = Callable[[Any], Any] | None


class Batchlike(Protocol):
    """What a statement runs on (:class:`recorder.store.writer.Batch`)."""

    conn: Connection
    cursor: Any  # the DB-API cursor of ``conn``


_ABSENT = object()


@dataclass(frozen=True, slots=True)
class _Bind:
    name: str  # the parameter's name in the SQL and in the values given
    proc: _Proc
    absent: Callable[[], Any]  # its value when the values given lack it (or raises)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: bool
    binds: tuple[tuple[str, _Proc, Callable[[], Any]], ...]  # _Bind's fields (faster)
    columns: tuple[str, ...]  # returned / selected
    results: tuple[_Proc, ...]

    def values(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        out = []
        for name, proc, absent in self.binds:
            value = params.get(name, _ABSENT)
            if value is _ABSENT:
                value = absent()
            out.append(value if proc is None else proc(value))
        if self.positional:
            return out
        return {bind[0]: value for bind, value in zip(self.binds, out, strict=True)}

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            name: value if proc is None else proc(value)
            for name, proc, value in zip(self.columns, self.results, raw, strict=True)
        }


class Prepared:
    """A Core statement compiled once per dialect (and column set) and run on the cursor."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}

    def run(self, b: Batchlike, params: Mapping[str, Any]) -> Any:
        """Execute with one set of values; returns the DB-API cursor (``rowcount``)."""
        return self._run(b, self._for(b.conn.dialect, params), params)

    @staticmethod
    def _run(b: Batchlike, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = compiled.values(params)
        try:
            b.cursor.execute(compiled.sql, values)
        except b.conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(b, exc, compiled.sql, values) from exc
        return b.cursor

    def many(self, b: Batchlike, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row (``executemany``: one call into the driver for all of them);
        every row gives the same columns."""
        if not rows:
            return
        compiled = self._for(b.conn.dialect, rows[0])
        values = [compiled.values(row) for row in rows]
        try:
            b.cursor.executemany(compiled.sql, values)
        except b.conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(b, exc, compiled.sql, values) from exc

    def first(self, b: Batchlike, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row the statement returns (``SELECT`` or ``RETURNING``), by column name,
        its values as SQLAlchemy gives them; None if there is none."""
        compiled = self._for(b.conn.dialect, params)
        cursor = self._run(b, compiled, params)
        raw = cursor.fetchone()
        if raw is not None:
            cursor.fetchall()  # SQLite finishes an UPDATE … RETURNING only once read to the end
        return None if raw is None else compiled.row(raw)

    def _for(self, dialect: Dialect, params: Mapping[str, Any]) -> _Compiled:
        key = (dialect.name, frozenset(params))
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = _compile(self.statement, dialect, key[1])
        return found


def _compile(statement: Any, dialect: Dialect, keys: frozenset[str]) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
    prefetch = {c.key: c.default for c in getattr(compiled, "insert_prefetch", ())}
    names = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
    binds = []
    for name in names:
        param = compiled.binds[name]
        proc = param.type.dialect_impl(dialect).bind_processor(dialect)
        binds.append(_Bind(name, proc, _absent(name, param, prefetch.get(name), keys)))
    columns = list(getattr(statement, "exported_columns", ()))
    return _Compiled(
        sql=compiled.string,
        positional=compiled.positional,
        binds=tuple((b.name, b.proc, b.absent) for b in binds),
        columns=tuple(c.key for c in columns),
        results=tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ),
    )


def _absent(name: str, param: Any, column_default: Any, keys: frozenset[str]) -> Callable[[], Any]:
    """What a parameter is when the values given lack it: an INSERT's column left out gets its
    Python default (a callable as SQLAlchemy wraps it, taking a context: None here), a value
    the statement holds (a literal) is that value; any other is missing."""
    if column_default is not None:
        arg = column_default.arg
        return (lambda: arg(None)) if callable(arg) else (lambda: arg)
    if not param.required and name not in keys:
        value = param.value
        return lambda: value

    def missing() -> Any:
        raise KeyError(f"no value for the bound parameter {name!r}")

    return missing


@dataclass(slots=True)
class Reading:
    """A read on a pooled connection's DB-API cursor (:meth:`recorder.store.db.Database.reading`):
    the finalizer's per-recording looks and the web console's session or token of a request,
    without SQLAlchemy's execution layer (and, on SQLite, without the ``BEGIN``/``ROLLBACK``
    pair ``Connection.execute`` adds around them)."""

    conn: Connection
    cursor: Any

    def first(self, statement: Prepared, params: Mapping[str, Any]) -> SimpleNamespace | None:
        """The statement's first row, its columns as attributes (as a ``Row`` gives them, with
        the same values), or None."""
        row = statement.first(self, params)
        return None if row is None else SimpleNamespace(**row)


def driver_call(b: Batchlike, what: str, call: Callable[[], Any]) -> Any:
    """``call`` (a DB-API call outside a statement: a commit) with its error raised as
    SQLAlchemy raises it; ``what`` names it in the error."""
    try:
        return call()
    except b.conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(b, exc, what, None) from exc


def _wrapped(b: Batchlike, exc: Exception, sql: str, values: Any) -> Exception:
    """The DB-API error as SQLAlchemy would raise it from ``Connection.execute``."""
    dialect = b.conn.dialect
    gone = dialect.is_disconnect(exc, b.conn.connection.dbapi_connection, b.cursor)
    if gone:
        b.conn.invalidate(exc)
    return DBAPIError.instance(
        sql, values, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone, dialect=dialect
    )
