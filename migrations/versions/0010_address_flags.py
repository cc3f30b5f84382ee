"""address flags (bouncing, blocked) and an index for the global answer limit

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "address_flags",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("bouncing_since", maild.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("bounce_status", sa.String(length=20), nullable=False),
        sa.Column("bounce_detail", sa.Text(), nullable=False),
        sa.Column("blocked_at", maild.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("blocked_by", sa.String(length=320), nullable=False),
        sa.Column("updated_at", maild.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_address_flags")),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.create_index("ix_outbox_kind", ["kind", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_kind")
    op.drop_table("address_flags")
