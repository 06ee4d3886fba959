"""queue_standing: each user's slots held and requests queued per provider, kept by triggers

The fair order (``allocator_svc.repository.queue``) ranks users by the slots they hold
and the requests they have waiting. Computed from the voices and allocation_requests
tables on every dispatch round and every queued answer, that cost grew with the whole
queue (200 ms a round at 50,000 queued requests). These counts are a cached aggregate
of those two tables, kept by triggers in the database itself, so every writer (ORM
transitions and hand-written statements alike, on every replica) keeps them exact
without knowing they exist. The states written here are ``SLOT_HOLDING`` as of this
revision; a test compares them with the code's, and a change of states needs a new
revision that recreates the triggers.

Revision ID: a0005
Revises: a0004
Create Date: 2026-12-04 18:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "a0005"
down_revision = "a0004"
branch_labels = None
depends_on = None

HOLDING_STATES = ("allocating", "ready", "reclaiming", "deleting")
_HOLDING = ", ".join(f"'{s}'" for s in HOLDING_STATES)

_BACKFILL = f"""
INSERT INTO queue_standing (provider, owner, held, queued)
SELECT provider, owner, sum(held), sum(queued) FROM (
    SELECT provider, owner, count(*) AS held, 0 AS queued FROM voices
    WHERE state IN ({_HOLDING}) GROUP BY provider, owner
    UNION ALL
    SELECT provider, owner, 0 AS held, count(*) AS queued FROM allocation_requests
    WHERE state = 'queued' GROUP BY provider, owner
) AS counts GROUP BY provider, owner
"""

# PostgreSQL: one upsert function, two row-trigger functions. AFTER triggers fire at the
# end of their statement, after the statement's own row locks are taken.
_PG_UP = [
    """
CREATE FUNCTION voiceslot_standing_add(p text, o text, dh integer, dq integer)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO queue_standing (provider, owner, held, queued) VALUES (p, o, dh, dq)
    ON CONFLICT (provider, owner) DO UPDATE
    SET held = queue_standing.held + EXCLUDED.held,
        queued = queue_standing.queued + EXCLUDED.queued
$$
""",
    f"""
CREATE FUNCTION voiceslot_voices_standing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state IN ({_HOLDING}) THEN
        PERFORM voiceslot_standing_add(OLD.provider, OLD.owner, -1, 0);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state IN ({_HOLDING}) THEN
        PERFORM voiceslot_standing_add(NEW.provider, NEW.owner, 1, 0);
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION voiceslot_requests_standing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state = 'queued' THEN
        PERFORM voiceslot_standing_add(OLD.provider, OLD.owner, 0, -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.state = 'queued' THEN
        PERFORM voiceslot_standing_add(NEW.provider, NEW.owner, 0, 1);
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER voices_standing_ins_del AFTER INSERT OR DELETE ON voices
FOR EACH ROW EXECUTE FUNCTION voiceslot_voices_standing()
""",
    """
CREATE TRIGGER voices_standing_upd AFTER UPDATE OF state, provider, owner ON voices
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
    OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.owner IS DISTINCT FROM NEW.owner)
EXECUTE FUNCTION voiceslot_voices_standing()
""",
    """
CREATE TRIGGER requests_standing_ins_del AFTER INSERT OR DELETE ON allocation_requests
FOR EACH ROW EXECUTE FUNCTION voiceslot_requests_standing()
""",
    """
CREATE TRIGGER requests_standing_upd AFTER UPDATE OF state, provider, owner
ON allocation_requests
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
    OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.owner IS DISTINCT FROM NEW.owner)
EXECUTE FUNCTION voiceslot_requests_standing()
""",
]

_PG_DOWN = [
    "DROP TRIGGER IF EXISTS requests_standing_upd ON allocation_requests",
    "DROP TRIGGER IF EXISTS requests_standing_ins_del ON allocation_requests",
    "DROP TRIGGER IF EXISTS voices_standing_upd ON voices",
    "DROP TRIGGER IF EXISTS voices_standing_ins_del ON voices",
    "DROP FUNCTION IF EXISTS voiceslot_requests_standing()",
    "DROP FUNCTION IF EXISTS voiceslot_voices_standing()",
    "DROP FUNCTION IF EXISTS voiceslot_standing_add(text, text, integer, integer)",
]


def _sqlite_add(side: str, dh: str, dq: str) -> str:
    return (
        f"INSERT INTO queue_standing (provider, owner, held, queued)"
        f" VALUES ({side}.provider, {side}.owner, {dh}, {dq})"
        f" ON CONFLICT (provider, owner) DO UPDATE"
        f" SET held = held + excluded.held, queued = queued + excluded.queued;"
    )


def _sqlite_triggers(table: str, counted: str, dh: int, dq: int) -> list[tuple[str, str]]:
    """SQLite has no trigger functions: one trigger per event, the counted condition in
    each one's WHEN."""
    minus = _sqlite_add("OLD", str(-dh), str(-dq))
    plus = _sqlite_add("NEW", str(dh), str(dq))
    old, new = counted.format(row="OLD"), counted.format(row="NEW")
    changed = (
        "(OLD.state IS NOT NEW.state OR OLD.provider IS NOT NEW.provider"
        " OR OLD.owner IS NOT NEW.owner)"
    )
    name = f"{table}_standing"
    return [
        (f"{name}_ins", f"AFTER INSERT ON {table} FOR EACH ROW WHEN {new} BEGIN {plus} END"),
        (f"{name}_del", f"AFTER DELETE ON {table} FOR EACH ROW WHEN {old} BEGIN {minus} END"),
        (
            f"{name}_upd_old",
            f"AFTER UPDATE OF state, provider, owner ON {table} FOR EACH ROW"
            f" WHEN {changed} AND {old} BEGIN {minus} END",
        ),
        (
            f"{name}_upd_new",
            f"AFTER UPDATE OF state, provider, owner ON {table} FOR EACH ROW"
            f" WHEN {changed} AND {new} BEGIN {plus} END",
        ),
    ]


_SQLITE = _sqlite_triggers("voices", f"{{row}}.state IN ({_HOLDING})", 1, 0) + _sqlite_triggers(
    "allocation_requests", "{row}.state = 'queued'", 0, 1
)


def upgrade() -> None:
    op.create_table(
        "queue_standing",
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "owner", name=op.f("pk_queue_standing")),
    )
    op.create_index(
        "ix_queue_standing_provider_held", "queue_standing", ["provider", "held", "owner"]
    )
    op.execute(_BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_UP:
            op.execute(statement)
    else:
        for name, body in _SQLITE:
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_DOWN:
            op.execute(statement)
    else:
        for name, _ in _SQLITE:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_queue_standing_provider_held", table_name="queue_standing")
    op.drop_table("queue_standing")
