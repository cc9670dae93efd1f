"""Per-experiment delivery key: image URLs are keyed aliases of the stimulus ids.

Each experiment gets a random secret; the URL of an image is an HMAC of its stimulus
id under that secret (experiment/delivery.py), so a URL cannot be mapped to a manifest
row without the server's database. Existing experiments get a fresh key: their image
URLs change, which browsers simply fetch again.

Revision ID: 0003
Revises: 0001
"""
import secrets

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('experiments', sa.Column('delivery_key', sa.String(length=64), nullable=True))
    experiments = sa.table('experiments', sa.column('id', sa.Integer()), sa.column('delivery_key', sa.String()))
    conn = op.get_bind()
    for (exp_id,) in conn.execute(sa.select(experiments.c.id)).all():
        conn.execute(experiments.update().where(experiments.c.id == exp_id)
                     .values(delivery_key=secrets.token_hex(32)))
    with op.batch_alter_table('experiments') as batch:
        batch.alter_column('delivery_key', existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('delivery_key')
