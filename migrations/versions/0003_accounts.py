"""accounts: companies, their domains, contacts and their addresses; tickets linked

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 14:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "companies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("customer_number", sa.String(length=100), nullable=True),
        sa.Column("tier", sa.String(length=50), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_companies")),
        sa.UniqueConstraint("customer_number", name=op.f("uq_companies_customer_number")),
    )
    op.create_table(
        "company_domains",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"],
                                name=op.f("fk_company_domains_company_id_companies")),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_company_domains")),
    )
    op.create_index(op.f("ix_company_domains_company_id"), "company_domains", ["company_id"])
    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("phone", sa.String(length=100), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["company_id"], ["companies.id"],
                                name=op.f("fk_contacts_company_id_companies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
    )
    op.create_index(op.f("ix_contacts_company_id"), "contacts", ["company_id"])
    op.create_table(
        "contact_addresses",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("primary", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"],
                                name=op.f("fk_contact_addresses_contact_id_contacts")),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_contact_addresses")),
    )
    op.create_index(op.f("ix_contact_addresses_contact_id"), "contact_addresses",
                    ["contact_id"])
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("verified", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("contact_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("company_id", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_tickets_contact_id"), ["contact_id"])
        batch.create_index(batch.f("ix_tickets_company_id"), ["company_id"])
        batch.create_foreign_key(batch.f("fk_tickets_contact_id_contacts"), "contacts",
                                 ["contact_id"], ["id"])
        batch.create_foreign_key(batch.f("fk_tickets_company_id_companies"), "companies",
                                 ["company_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint("fk_tickets_company_id_companies", type_="foreignkey")
        batch.drop_constraint("fk_tickets_contact_id_contacts", type_="foreignkey")
        batch.drop_index("ix_tickets_company_id")
        batch.drop_index("ix_tickets_contact_id")
        batch.drop_column("company_id")
        batch.drop_column("contact_id")
        batch.drop_column("verified")
    op.drop_table("contact_addresses")
    op.drop_table("contacts")
    op.drop_table("company_domains")
    op.drop_table("companies")
