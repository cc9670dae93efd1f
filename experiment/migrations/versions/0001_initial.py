"""Initial schema: experiments, stimuli, participants, trials, responses, admins.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admins')),
    sa.UniqueConstraint('username', name=op.f('uq_admins_username'))
    )
    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('set_hash', sa.String(length=64), nullable=False),
    sa.Column('set_info', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('n_lists', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments')),
    sa.UniqueConstraint('slug', name=op.f('uq_experiments_slug'))
    )
    op.create_table('participants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('prolific_pid', sa.String(length=128), nullable=True),
    sa.Column('study_id', sa.String(length=128), nullable=True),
    sa.Column('session_id', sa.String(length=128), nullable=True),
    sa.Column('list_index', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('n_trials', sa.Integer(), nullable=False),
    sa.Column('next_index', sa.Integer(), nullable=False),
    sa.Column('consented_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('browser', sa.JSON(), nullable=True),
    sa.Column('refresh_hz', sa.Float(), nullable=True),
    sa.Column('debrief', sa.Text(), nullable=True),
    sa.Column('catch_failures', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_participants_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_participants')),
    sa.UniqueConstraint('experiment_id', 'prolific_pid', name=op.f('uq_participants_experiment_id_prolific_pid')),
    sa.UniqueConstraint('public_id', name=op.f('uq_participants_public_id')),
    sa.UniqueConstraint('token', name=op.f('uq_participants_token')),
    sa.CheckConstraint("status IN ('in_progress', 'completed', 'screened_out')", name=op.f('ck_participants_status')),
    )
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.create_index('ix_participants_experiment_list_status', ['experiment_id', 'list_index', 'status'], unique=False)

    op.create_table('stimuli',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('stimulus_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=512), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('condition', sa.String(length=16), nullable=False),
    sa.Column('pair', sa.String(length=128), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('eps', sa.Integer(), nullable=False),
    sa.Column('pair_key', sa.String(length=256), nullable=False),
    sa.Column('ensemble_category', sa.String(length=64), nullable=False),
    sa.Column('ensemble_category_prob', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], name=op.f('fk_stimuli_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stimuli')),
    sa.UniqueConstraint('experiment_id', 'stimulus_id', name=op.f('uq_stimuli_experiment_id_stimulus_id'))
    )
    with op.batch_alter_table('stimuli', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stimuli_stimulus_id'), ['stimulus_id'], unique=False)

    op.create_table('trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('condition', sa.String(length=16), nullable=False),
    sa.Column('question', sa.String(length=512), nullable=False),
    sa.Column('question_target', sa.String(length=64), nullable=False),
    sa.Column('eps', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=512), nullable=False),
    sa.Column('pair_key', sa.String(length=256), nullable=False),
    sa.Column('left_stimulus_id', sa.String(length=64), nullable=False),
    sa.Column('right_stimulus_id', sa.String(length=64), nullable=False),
    sa.Column('left_target', sa.String(length=64), nullable=False),
    sa.Column('right_target', sa.String(length=64), nullable=False),
    sa.Column('left_condition', sa.String(length=16), nullable=False),
    sa.Column('right_condition', sa.String(length=16), nullable=False),
    sa.Column('target_side', sa.String(length=5), nullable=False),
    sa.Column('presentation_ms', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['participant_id'], ['participants.id'], name=op.f('fk_trials_participant_id_participants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trials')),
    sa.UniqueConstraint('participant_id', 'index', name=op.f('uq_trials_participant_id_index')),
    sa.UniqueConstraint('public_id', name=op.f('uq_trials_public_id')),
    sa.CheckConstraint("target_side IN ('left', 'right')", name=op.f('ck_trials_target_side')),
    )
    op.create_table('responses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('participant_id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=64), nullable=False),
    sa.Column('response', sa.String(length=5), nullable=False),
    sa.Column('response_source', sa.String(length=8), nullable=False),
    sa.Column('rt_ms', sa.Float(), nullable=False),
    sa.Column('onset_frame_ms', sa.Float(), nullable=True),
    sa.Column('offset_frame_ms', sa.Float(), nullable=True),
    sa.Column('fullscreen', sa.Boolean(), nullable=False),
    sa.Column('blurred', sa.Boolean(), nullable=False),
    sa.Column('blur_events', sa.Integer(), nullable=False),
    sa.Column('server_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], ['participants.id'], name=op.f('fk_responses_participant_id_participants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trial_id'], ['trials.id'], name=op.f('fk_responses_trial_id_trials'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_responses')),
    sa.UniqueConstraint('participant_id', 'idempotency_key', name=op.f('uq_responses_participant_id_idempotency_key')),
    sa.UniqueConstraint('trial_id', name=op.f('uq_responses_trial_id')),
    sa.CheckConstraint("response IN ('left', 'right')", name=op.f('ck_responses_response')),
    )


def downgrade() -> None:
    op.drop_table('responses')
    op.drop_table('trials')
    with op.batch_alter_table('stimuli', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stimuli_stimulus_id'))

    op.drop_table('stimuli')
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.drop_index('ix_participants_experiment_list_status')

    op.drop_table('participants')
    op.drop_table('experiments')
    op.drop_table('admins')
