"""SLA sweeps: breach flag, waiting-since, and marks that make each sweep mail happen once

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep_marks",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("at", maild.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sweep_marks")),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("breached_at", maild.models.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("waiting_since", maild.models.UTCDateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("waiting_since")
        batch.drop_column("breached_at")
    op.drop_table("sweep_marks")
