"""Launch integrity: revocable admin sessions, throttle counters, server-side timing.

* ``admins.session_version``: every admin cookie carries the version it was issued
  under; logout and a password change raise it, which ends every copy of the cookie.
* ``throttle``: shared counters (login failures, participant starts per address) so
  that every server process and every machine on one database sees the same counts.
* ``trials.delivered_at``, ``participants.last_answer_at`` and
  ``responses.server_rt_ms``: the server's own clock for each answer.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('admins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('throttle',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('window_ends', sa.DateTime(timezone=True), nullable=False),
    sa.Column('blocked_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_throttle')),
    )
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_answer_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('server_rt_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_column('server_rt_ms')
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.drop_column('last_answer_at')
    with op.batch_alter_table('trials', schema=None) as batch_op:
        batch_op.drop_column('delivered_at')
    op.drop_table('throttle')
    with op.batch_alter_table('admins', schema=None) as batch_op:
        batch_op.drop_column('session_version')
