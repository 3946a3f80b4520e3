"""run.finished_at: dropped, it was never written (a run's end is Airflow's dag_run.end_date)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("finished_at")


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
