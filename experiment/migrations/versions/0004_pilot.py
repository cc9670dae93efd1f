"""Rehearsal and display geometry: preview and void participants; window, screen and key counts per answer.

* ``participants.preview``: a rehearsal through the admin's preview link; takes no list slot
  and never appears in the export.
* ``participants.voided_at`` / ``void_reason``: a participant the researcher set aside (a test
  run, a known duplicate); frees the list slot and leaves the export unless asked for.
* per answer: the window, screen, device pixel ratio and displayed image size the browser
  measured, the number of fullscreen exits so far, and the keys ignored during the trial
  (pressed before the pair appeared, or held down).

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

RESPONSE_COLUMNS = (
    ('window_width', sa.Integer()), ('window_height', sa.Integer()), ('screen_width', sa.Integer()),
    ('screen_height', sa.Integer()), ('device_pixel_ratio', sa.Float()), ('image_px', sa.Integer()),
    ('fullscreen_exits', sa.Integer()), ('ignored_keys', sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table('participants') as batch:
        batch.add_column(sa.Column('preview', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('void_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('responses') as batch:
        for name, kind in RESPONSE_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('responses') as batch:
        for name, _kind in RESPONSE_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table('participants') as batch:
        batch.drop_column('void_reason')
        batch.drop_column('voided_at')
        batch.drop_column('preview')
