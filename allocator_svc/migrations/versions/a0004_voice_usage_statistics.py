"""voices.use_*: per-voice use statistics for the adaptive reclaim policy

The lease grant updates them (allocator_svc.domain.usage); every replica reads the same
history when it decides which voice to reclaim. Existing voices start with no history.

Revision ID: a0004
Revises: a0003
Create Date: 2026-12-04 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import voiceslot.db

revision = "a0004"
down_revision = "a0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("use_freq", sa.Float()),
    ("use_requests", sa.Integer()),
    ("use_continued", sa.Integer()),
    ("use_burst", sa.Integer()),
    ("use_sessions", sa.Integer()),
    ("use_expected", sa.Float()),
    ("use_gap_sum", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("voices", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("use_at", voiceslot.db.UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("voices", schema=None) as batch_op:
        batch_op.drop_column("use_at")
        for name, _type in reversed(COLUMNS):
            batch_op.drop_column(name)
