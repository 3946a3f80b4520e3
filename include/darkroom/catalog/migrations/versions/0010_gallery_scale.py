"""The gallery at 10,000 assets: asset.thumbnail_uri / thumbnail_sha256 (the review
thumbnail, made once at postprocess), and the indexes its pages and counts read

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("asset") as batch:
        batch.add_column(sa.Column("thumbnail_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("thumbnail_sha256", sa.String(length=64), nullable=True))
        batch.create_index("ix_asset_run_created_at", ["run_pk", "created_at", "id"], unique=False)
        batch.create_index("ix_asset_run_status_created_at", ["run_pk", "status", "created_at", "id"],
                           unique=False)


def downgrade() -> None:
    with op.batch_alter_table("asset") as batch:
        batch.drop_index("ix_asset_run_status_created_at")
        batch.drop_index("ix_asset_run_created_at")
        batch.drop_column("thumbnail_sha256")
        batch.drop_column("thumbnail_uri")
