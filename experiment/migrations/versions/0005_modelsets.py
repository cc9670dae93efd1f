"""Model sets: the set of attack models each stimulus and each trial was made on.

``stimuli.model_set`` comes from the manifest (empty for clean crops, shared by every
set, and for sets made before model sets); ``trials.model_set`` is the design factor a
trial belongs to, carried into the export. Existing rows get the empty name: one set.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('stimuli', 'trials'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('model_set', sa.String(length=64), nullable=False, server_default=''))


def downgrade() -> None:
    for table in ('trials', 'stimuli'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('model_set')
