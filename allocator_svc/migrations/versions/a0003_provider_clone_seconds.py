"""providers.clone_seconds: the measured mean clone duration per provider

Queue wait estimates come from it (allocator_svc.domain.estimates). Nullable: unknown
until a provider's first clone completes.

Revision ID: a0003
Revises: a0002
Create Date: 2026-11-28 02:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "a0003"
down_revision = "a0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clone_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("providers", schema=None) as batch_op:
        batch_op.drop_column("clone_seconds")
