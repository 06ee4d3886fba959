"""voices.leases_held: each voice's lease rows, kept by the lease writers; and
voices.leases_purged_to, up to when its expired leases are deleted

The lease grant reported a voice's active leases by counting them: PostgreSQL visits
every counted row's heap tuple (recent rows are never all-visible), so each grant cost
as much as the voice had leases, and that was most of the grant's database time once a
voice held a few hundred (``bench/README.md``). The grant, release and the expiry sweep
now keep this count under the voice's row lock (``allocator_svc.repository.leases``);
existing voices start with their rows counted. The grant deletes a voice's expired
leases; ``leases_purged_to`` lets it look only at those that expired since it last did.

Revision ID: a0006
Revises: a0005
Create Date: 2026-12-05 03:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

import voiceslot.db

revision = "a0006"
down_revision = "a0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("voices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("leases_held", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("leases_purged_to", voiceslot.db.UtcDateTime(), nullable=True)
        )
    op.execute(
        "UPDATE voices SET leases_held = "
        "(SELECT count(*) FROM leases WHERE leases.voice_id = voices.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("voices", schema=None) as batch_op:
        batch_op.drop_column("leases_purged_to")
        batch_op.drop_column("leases_held")
