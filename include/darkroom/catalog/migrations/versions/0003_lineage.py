"""lineage queries: asset_lora rows and indexes for assets search

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-20 23:55:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'asset_lora',
        sa.Column('asset_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('weight', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['asset_id'], ['asset.id'], ),
        sa.PrimaryKeyConstraint('asset_id', 'name'),
    )
    op.create_index('ix_asset_lora_name_version', 'asset_lora', ['name', 'version'], unique=False)
    op.create_index('ix_asset_created_at', 'asset', ['created_at'], unique=False)
    op.create_index('ix_asset_status_created_at', 'asset', ['status', 'created_at'], unique=False)
    op.create_index('ix_qa_result_check_passed', 'qa_result', ['check', 'passed'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_qa_result_check_passed', table_name='qa_result')
    op.drop_index('ix_asset_status_created_at', table_name='asset')
    op.drop_index('ix_asset_created_at', table_name='asset')
    op.drop_index('ix_asset_lora_name_version', table_name='asset_lora')
    op.drop_table('asset_lora')
