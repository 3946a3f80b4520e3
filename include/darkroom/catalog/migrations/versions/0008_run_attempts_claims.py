"""Which run owns which asset: run.attempt (a re-processed DAG run is a new attempt, with
its own assets and manifest), run.model_identity, and asset_claim (exactly one run draws
each asset)

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("model_identity", sa.Text(), nullable=True))
        batch.drop_constraint("uq_run_dag_run", type_="unique")
        batch.create_unique_constraint("uq_run_dag_run_attempt", ["dag_id", "run_id", "attempt"])
    op.create_table(
        "asset_claim",
        sa.Column("asset_id", sa.String(length=32), nullable=False),
        sa.Column("variant_id", sa.String(length=32), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["run.id"]),
        sa.ForeignKeyConstraint(["variant_id"], ["variant.id"]),
        sa.PrimaryKeyConstraint("asset_id"),
    )
    op.create_index(op.f("ix_asset_claim_run_pk"), "asset_claim", ["run_pk"], unique=False)
    op.create_index(op.f("ix_asset_claim_variant_id"), "asset_claim", ["variant_id"], unique=False)
    # Every asset made so far was drawn by its run.
    op.execute("INSERT INTO asset_claim (asset_id, variant_id, run_pk, claimed_at) "
               "SELECT id, variant_id, run_pk, created_at FROM asset")


def downgrade() -> None:
    op.drop_index(op.f("ix_asset_claim_variant_id"), table_name="asset_claim")
    op.drop_index(op.f("ix_asset_claim_run_pk"), table_name="asset_claim")
    op.drop_table("asset_claim")
    # The old (dag_id, run_id) key cannot hold a re-processed run's later attempts.
    later = op.get_bind().execute(sa.text("SELECT count(*) FROM run WHERE attempt > 0")).scalar()
    if later:
        raise RuntimeError(f"{later} run attempt(s) after the first are in the catalog; the schema "
                           "before 0008 cannot hold them: export or delete them first")
    with op.batch_alter_table("run") as batch:
        batch.drop_constraint("uq_run_dag_run_attempt", type_="unique")
        batch.create_unique_constraint("uq_run_dag_run", ["dag_id", "run_id"])
        batch.drop_column("model_identity")
        batch.drop_column("attempt")
