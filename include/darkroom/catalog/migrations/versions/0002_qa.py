"""qa: check status (pass / fail / borderline / not_run) and regeneration links

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("qa_result", sa.Column("status", sa.String(length=16), server_default="pass",
                                         nullable=False))
    op.add_column("variant", sa.Column("regenerated_from", sa.String(length=32), nullable=True))
    op.add_column("variant", sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
    op.create_index(op.f("ix_variant_regenerated_from"), "variant", ["regenerated_from"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_variant_regenerated_from"), table_name="variant")
    with op.batch_alter_table("variant") as batch:
        batch.drop_column("attempt")
        batch.drop_column("regenerated_from")
    with op.batch_alter_table("qa_result") as batch:
        batch.drop_column("status")
