"""derivative: perceptual hash, watermark method and key, the signed (published) file

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("derivative") as batch:
        batch.add_column(sa.Column("phash", sa.String(32), nullable=True))
        batch.add_column(sa.Column("watermark", sa.String(32), nullable=True))
        batch.add_column(sa.Column("watermark_key", sa.String(16), nullable=True))
        batch.add_column(sa.Column("signed_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("signed_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("signed_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("signed_review_id", sa.Integer(), nullable=True))
        batch.create_index("ix_derivative_watermark_key", ["watermark_key"])
        batch.create_index("ix_derivative_signed_sha256", ["signed_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("derivative") as batch:
        batch.drop_index("ix_derivative_signed_sha256")
        batch.drop_index("ix_derivative_watermark_key")
        for name in ("signed_review_id", "signed_bytes", "signed_sha256", "signed_uri",
                     "watermark_key", "watermark", "phash"):
            batch.drop_column(name)
