"""Checks on the repository itself: the wire contract is linted and its generated code
current, the layers keep to their imports, and each service's migrations run on both
databases and match its models."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from allocator_svc import app as allocator_app
from allocator_svc.models import Base as AllocatorBase
from synth_svc import app as synth_app
from synth_svc.models import Base as SynthBase
from voiceslot.db import create_engine

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_generated_code_is_current(tmp_path: Path):
    result = run(sys.executable, "scripts/gen_proto.py", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    fresh = sorted(p.name for p in (tmp_path / "voiceslot" / "v1").iterdir())
    checked_in = sorted(
        p.name
        for p in (ROOT / "voiceslot" / "v1").iterdir()
        if p.name != "__init__.py" and p.is_file()
    )
    assert fresh == checked_in
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "voiceslot" / "v1", ROOT / "voiceslot" / "v1", fresh, shallow=False
    )
    assert not mismatch and not errors, (
        f"stale generated code, run scripts/gen_proto.py: {mismatch}"
    )


def test_buf_lint_and_format_are_clean():
    lint = run(str(BIN / "buf"), "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(str(BIN / "buf"), "format", "--diff", "--exit-code")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_import_layers_are_kept():
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


SERVICES = [
    (allocator_app.migrate, AllocatorBase.metadata, allocator_app.VERSION_TABLE),
    (synth_app.migrate, SynthBase.metadata, synth_app.VERSION_TABLE),
]


def own_tables(connection, metadata) -> MigrationContext:
    """Both services share one database; compare each only with its own tables."""

    def include(obj, name, type_, reflected, compare_to) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in metadata.tables

    return MigrationContext.configure(connection, opts={"include_object": include})


async def check_migrations(url: str) -> None:
    for migrate, _, _ in SERVICES:
        await migrate(url)
        await migrate(url)  # idempotent: a second start changes nothing
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            for _, metadata, version_table in SERVICES:
                assert version_table in tables
                assert set(metadata.tables) <= tables
                diff = await conn.run_sync(
                    lambda c, md=metadata: compare_metadata(own_tables(c, md), md)
                )
                assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        await engine.dispose()


async def test_migrations_on_sqlite(tmp_path: Path):
    await check_migrations(f"sqlite+aiosqlite:///{tmp_path / 'both.sqlite3'}")


@pytest.mark.postgres
async def test_migrations_on_postgres(postgres_url: str):
    await check_migrations(postgres_url)
