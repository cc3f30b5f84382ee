"""the call-back service (escalated_at, escalation_phone) and revocable customer links

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("escalated_at", maild.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("escalation_phone", sa.String(length=100), nullable=False, server_default=""))
        batch.add_column(sa.Column("link_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("link_version")
        batch.drop_column("escalation_phone")
        batch.drop_column("escalated_at")
