"""oauth_tokens: OAuth2 tokens for IMAP and SMTP logins, shared by every process

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import maild.models

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = maild.models.UTCDateTime(timezone=True)
    op.create_table(
        "oauth_tokens",
        sa.Column("account", sa.String(length=320), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("flow", sa.String(length=30), nullable=False),
        sa.Column("client_id", sa.String(length=300), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("access_expires_at", when, nullable=True),
        sa.Column("access_lifetime", sa.Integer(), nullable=False),
        sa.Column("logged_in_at", when, nullable=False),
        sa.Column("refresh_token_at", when, nullable=True),
        sa.Column("refreshed_at", when, nullable=True),
        sa.Column("refreshes", sa.BigInteger(), nullable=False),
        sa.Column("invalid", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_error_at", when, nullable=True),
        sa.Column("refreshing_until", when, nullable=True),
        sa.Column("refreshing_by", sa.String(length=100), nullable=False),
        sa.Column("lead_told_at", when, nullable=True),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_oauth_tokens")),
    )


def downgrade() -> None:
    op.drop_table("oauth_tokens")
