"""outbox: bytes by reference in the blob store (raw_sha256, raw now nullable) and the
VERP token, indexed, for bounce lookup

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _token(message_id: str) -> str:
    """As `suppression.verp_token` at the time of writing: `<maild.t10001.TOKEN@…>` → TOKEN."""
    return message_id.strip("<>").partition("@")[0].rpartition(".")[2][:64]


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("raw_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("verp_token", sa.String(length=64), nullable=False,
                                   server_default=""))
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=True)
        batch.create_foreign_key("fk_outbox_raw_sha256_blobs", "blobs", ["raw_sha256"],
                                 ["sha256"])
        batch.create_index("ix_outbox_verp_token", ["verp_token"])
    # Rows written before: their token from their Message-ID (their bytes stay in `raw`).
    outbox = sa.table("outbox", sa.column("id", sa.Integer()),
                      sa.column("message_id", sa.String()), sa.column("verp_token", sa.String()))
    bind = op.get_bind()
    last = 0
    while rows := bind.execute(sa.select(outbox.c.id, outbox.c.message_id)
                               .where(outbox.c.id > last).order_by(outbox.c.id)
                               .limit(1000)).all():
        bind.execute(outbox.update().where(outbox.c.id == sa.bindparam("row_id"))
                     .values(verp_token=sa.bindparam("token")),
                     [{"row_id": i, "token": _token(m)} for i, m in rows])
        last = rows[-1][0]


def downgrade() -> None:
    # Mails whose bytes are in the blob store only cannot go back to the old schema.
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_verp_token")
        batch.drop_constraint("fk_outbox_raw_sha256_blobs", type_="foreignkey")
        batch.drop_column("verp_token")
        batch.drop_column("raw_sha256")
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)
