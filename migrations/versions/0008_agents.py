"""agents, and what agents do to tickets: owner, cause, merges, internal messages

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("lead", sa.Boolean(), nullable=False),
        sa.Column("created_at", maild.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_agents")),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=320), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("cause", sa.String(length=20), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("merged_into", sa.BigInteger(), nullable=True))
        batch.create_index("ix_tickets_owner", ["owner"])
    with op.batch_alter_table("ticket_messages") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("internal", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("ticket_messages") as batch:
        batch.drop_column("internal")
        batch.drop_column("kind")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_owner")
        batch.drop_column("merged_into")
        batch.drop_column("cause")
        batch.drop_column("owner")
    op.drop_table("agents")
