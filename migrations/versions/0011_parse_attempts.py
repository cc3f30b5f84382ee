"""parse attempts: the crash counter of mails that end the process while being parsed

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 03:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "parse_attempts",
        sa.Column("mailbox", sa.String(length=300), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("started_at", maild.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("crashes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", "uidvalidity", "uid", name=op.f("pk_parse_attempts")),
    )


def downgrade() -> None:
    op.drop_table("parse_attempts")
