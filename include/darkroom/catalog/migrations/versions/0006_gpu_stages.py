"""Each stage on its worker: plan_item.backend (routing decided at planning), asset.upscaled
(the model upscaler's output, made on the GPU queue), device_use (what the GPU stages ran on)

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plan_item") as batch:
        batch.add_column(sa.Column("backend", sa.String(length=32), nullable=True))
    with op.batch_alter_table("asset") as batch:
        batch.add_column(sa.Column("upscaled", sa.JSON(), nullable=True))
    op.create_table(
        "device_use",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("worker", sa.String(length=250), nullable=False),
        sa.Column("device", sa.String(length=128), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=True),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_device_use_run_pk"), "device_use", ["run_pk"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_device_use_run_pk"), table_name="device_use")
    op.drop_table("device_use")
    with op.batch_alter_table("asset") as batch:
        batch.drop_column("upscaled")
    with op.batch_alter_table("plan_item") as batch:
        batch.drop_column("backend")
