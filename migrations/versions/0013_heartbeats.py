"""heartbeats: the daemon's last word on its mailbox, for `maild status`

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = maild.models.UTCDateTime(timezone=True)
    op.create_table(
        "heartbeats",
        sa.Column("mailbox", sa.String(length=300), nullable=False),
        sa.Column("beat_at", when, nullable=False),
        sa.Column("started_at", when, nullable=False),
        sa.Column("process", sa.String(length=300), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("last_fetch_at", when, nullable=True),
        sa.Column("inbox_waiting", sa.Integer(), nullable=False),
        sa.Column("mailbox_error", sa.Text(), nullable=False),
        sa.Column("mailbox_error_since", when, nullable=True),
        sa.Column("smtp_ok_at", when, nullable=True),
        sa.Column("smtp_error", sa.Text(), nullable=False),
        sa.Column("smtp_error_since", when, nullable=True),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("heartbeats")
