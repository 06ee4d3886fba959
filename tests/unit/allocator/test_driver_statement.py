"""``DriverStatement`` writes a statement's constants into its SQL as literals and
keeps only the per-call values as the driver's positional parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import DateTime, Float, Integer, String, bindparam, literal, literal_column, select
from sqlalchemy.dialects import postgresql

from allocator_svc.repository._driver import DriverStatement
from voiceslot.db import UtcDateTime

DIALECT = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]


def test_constants_become_literals_and_bound_values_are_renumbered():
    statement = select(
        literal(1.5, Float()).label("a"),
        bindparam("b_second", type_=Integer()).label("b"),
        literal("it's", String()).label("c"),
        bindparam("b_when", type_=UtcDateTime()).label("d"),
        literal(datetime(1970, 1, 1), DateTime()).label("e"),
        bindparam("b_second", type_=Integer()).label("f"),
    )
    compiled = DriverStatement(statement, DIALECT, bound=["b_second", "b_when"])
    assert "1.5" in compiled.sql and "'it''s'" in compiled.sql
    assert "'1970-01-01 00:00:00'" in compiled.sql
    assert compiled.sql.count("$1") == 2 and "$2" in compiled.sql and "$3" not in compiled.sql
    when = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
    # Bound values are converted by their types, as SQLAlchemy would (UTC made naive).
    assert compiled.arguments({"b_second": 7, "b_when": when}) == [7, when.replace(tzinfo=None)]


def test_a_name_that_is_no_parameter_is_refused():
    with pytest.raises(ValueError, match="not parameters"):
        DriverStatement(select(literal(1)), DIALECT, bound=["b_missing"])


def test_a_statement_with_string_literals_is_refused():
    # Its text could hold "$n" that is no placeholder.
    statement = select(literal_column("'$1'"), bindparam("b_x", type_=Integer()))
    with pytest.raises(ValueError, match="string literals"):
        DriverStatement(statement, DIALECT, bound=["b_x"])
