"""attachments: the declared type, whether it is listed, why it was not stored

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.add_column(sa.Column("declared_type", sa.String(length=255), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("listed", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column("note", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("note")
        batch.drop_column("listed")
        batch.drop_column("declared_type")
