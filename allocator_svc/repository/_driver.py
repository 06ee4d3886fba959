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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from voiceslot.db import is_connection_lost, is_transaction_conflict


class DriverStatement:
    """``statement`` compiled for ``dialect`` once. ``bound`` names the parameters given
    per call, which are converted by their types as SQLAlchemy would; every other
    parameter is a constant of the statement, converted once."""

    def __init__(self, statement: Select[Any], dialect: Dialect, *, bound: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        names = compiled.positiontup or []
        if unknown := set(bound) - set(names):
            raise ValueError(f"not parameters of the statement: {sorted(unknown)}")
        constants = compiled.construct_params(dict.fromkeys(bound))
        # Per position: (name bound per call, converter) or (None, the constant's value).
        self._slots: list[tuple[str | None, Any]] = []
        for name in names:
            convert = compiled.binds[name].type.bind_processor(dialect)
            if name in bound:
                self._slots.append((name, convert))
            else:
                value = constants[name]
                self._slots.append((None, convert(value) if convert else value))
        self._columns: list[tuple[str, Callable[[Any], Any] | None]] = [
            (c.name, c.type.result_processor(dialect, None)) for c in statement.selected_columns
        ]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for one execution."""
        args = []
        for name, slot in self._slots:
            if name is None:
                args.append(slot)
            else:
                value = params[name]
                args.append(slot(value) if slot is not None and value is not None else value)
        return args

    def rows(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        """The driver's records as mappings of converted values, like a Core result's."""
        out = []
        for record in records:
            out.append(
                {
                    name: convert(value) if convert is not None and value is not None else value
                    for (name, convert), value in zip(self._columns, record, strict=True)
                }
            )
        return out


class DriverConnections:
    """Connections taken from ``engine``'s pool and kept, each running one statement at
    a time; as many exist as were ever wanted at once. A connection whose statement
    failed in any way is invalidated (closed, not returned to the pool): a cut or a
    cancellation may have left it mid-protocol."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._idle: list[tuple[AsyncConnection, Any]] = []

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An asyncpg connection of this pool's, in autocommit (the engine's own level)."""
        if self._idle:
            held = self._idle.pop()
        else:
            conn = await self._engine.connect()
            held = (conn, (await conn.get_raw_connection()).driver_connection)
        try:
            yield held[1]
        except BaseException:
            await _discard(held[0])
            raise
        self._idle.append(held)

    async def aclose(self) -> None:
        """Hand the kept connections back to the pool (for its ``dispose``)."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


async def _discard(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):  # already broken; the pool forgets it either way
        await asyncio.shield(conn.invalidate())


def worth_retrying(exc: BaseException) -> bool:
    """A failure after which the same single statement may run again at once: the
    connection was lost (it is replaced), or PostgreSQL aborted it in a conflict."""
    return is_connection_lost(exc) or is_transaction_conflict(exc)
