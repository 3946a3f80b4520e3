"""asset.route: why its backend made it (primary, fallback, burst)

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("asset") as batch:
        batch.add_column(sa.Column("route", sa.String(16), server_default="primary", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("asset") as batch:
        batch.drop_column("route")
