"""Core statements run on asyncpg's own connection: the lease hot path's executor.

Per statement, SQLAlchemy's ``execute`` costs this process more than the lease grant's
whole share of the database work: a pool checkout, a greenlet switch, an execution
context, result processing (profiled in ``bench/README.md``). The hot path's statement
is still built once with Core (the SQL stays in one place, ``leases.py``) and compiled
once here for the driver; a call then only binds values and hands them to asyncpg,
whose own statement cache prepares the statement once per connection. Connections are
taken from the engine's pool (so its URL, credentials and TLS apply) and kept.

Hand-written because neither library offers it: SQLAlchemy's compiled statement cache
still builds an execution context per call, and asyncpg alone would mean writing the
grant's SQL twice (SQLite runs the same Core statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from voiceslot.db import is_connection_lost, is_transaction_conflict

_PLACEHOLDER = re.compile(r"\$(\d+)")
"""A positional parameter in PostgreSQL's text (asyncpg's "numeric dollar" style)."""


class DriverStatement:
    """``statement`` compiled for ``dialect`` once. ``bound`` names the parameters given
    per call, which are converted by their types as SQLAlchemy would; every other
    parameter is a constant of the statement, written into its text as a literal.

    Sent as parameters, the constants were encoded by the driver on every execution:
    the grant has 34 of them beside its 7 per-call ones, and they cost this process
    more than the statement's whole round trip otherwise does."""

    def __init__(self, statement: Select[Any], dialect: Dialect, *, bound: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        names = compiled.positiontup or []
        if unknown := set(bound) - set(names):
            raise ValueError(f"not parameters of the statement: {sorted(unknown)}")
        if "'" in compiled.string:
            # Every "$n" in the text must be a placeholder for the rewrite below.
            raise ValueError("the statement has string literals: pass them as parameters")
        constants = compiled.construct_params(dict.fromkeys(bound))
        # Per placeholder of the compiled text: what replaces it.
        replacement: dict[int, str] = {}
        self._bound: list[tuple[str, Callable[[Any], Any] | None]] = []
        for position, name in enumerate(names, 1):
            type_ = compiled.binds[name].type
            if name in bound:
                self._bound.append((name, type_.bind_processor(dialect)))
                replacement[position] = f"${len(self._bound)}"
            else:
                render = type_.literal_processor(dialect)
                if render is None:
                    raise ValueError(f"constant {name} has no literal form")
                replacement[position] = render(constants[name])
        self.sql = _PLACEHOLDER.sub(lambda m: replacement[int(m[1])], compiled.string)
        self._names = [c.name for c in statement.selected_columns]
        # Only the columns whose type converts (timestamps to aware ones): the rest are
        # the driver's values as they are.
        self._converted: list[tuple[str, Callable[[Any], Any]]] = [
            (c.name, convert)
            for c in statement.selected_columns
            if (convert := c.type.result_processor(dialect, None)) is not None
        ]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for one execution."""
        args = []
        for name, convert in self._bound:
            value = params[name]
            args.append(convert(value) if convert is not None and value is not None else value)
        return args

    def rows(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        """The driver's records as mappings of converted values, like a Core result's."""
        out = []
        for record in records:
            row = dict(zip(self._names, record, strict=True))
            for name, convert in self._converted:
                if (value := row[name]) is not None:
                    row[name] = convert(value)
            out.append(row)
        return out


class Held(NamedTuple):
    """A kept connection: the pool's, and the driver's own inside it."""

    pooled: AsyncConnection
    driver: Any


class DriverConnections:
    """Connections taken from ``engine``'s pool and kept, each running one statement at
    a time; as many exist as were ever wanted at once. A connection whose statement
    failed in any way is invalidated (closed, not returned to the pool): a cut or a
    cancellation may have left it mid-protocol."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._idle: list[Held] = []

    async def take(self) -> Held:
        """A connection of this pool's, in autocommit (the engine's own level): ``give``
        it back after a statement that succeeded, ``discard`` it after any failure.
        (Two calls, not a context manager: a generator-based one cost the batch as much
        as building its parameters.)"""
        if self._idle:
            return self._idle.pop()
        conn = await self._engine.connect()
        return Held(conn, (await conn.get_raw_connection()).driver_connection)

    def give(self, held: Held) -> None:
        self._idle.append(held)

    async def discard(self, held: Held) -> None:
        with contextlib.suppress(Exception):  # already broken; the pool forgets it either way
            await asyncio.shield(held.pooled.invalidate())

    async def aclose(self) -> None:
        """Hand the kept connections back to the pool (for its ``dispose``)."""
        idle, self._idle = self._idle, []
        for held in idle:
            await held.pooled.close()


def worth_retrying(exc: BaseException) -> bool:
    """A failure after which the same single statement may run again at once: the
    connection was lost (it is replaced), or PostgreSQL aborted it in a conflict."""
    return is_connection_lost(exc) or is_transaction_conflict(exc)
