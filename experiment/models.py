"""The experiment's tables (SQLAlchemy 2 declarative models).

The schema is owned by the Alembic migrations in ``experiment/migrations``; these
models must match them (a test compares the two). Integrity rules that protect
the data live in the database itself, not only in Python, because several server
processes write at once:

* ``(experiment_id, prolific_pid)`` is unique: one record per Prolific participant;
* ``responses.trial_id`` is unique: a trial is answered at most once;
* ``(participant_id, idempotency_key)`` is unique: a replayed POST stores nothing.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware UTC now (stored as UTC in both SQLite and PostgreSQL)."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Experiment(Base):
    """One study: an imported stimulus set plus its design and codes."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    set_hash: Mapped[str] = mapped_column(String(64))
    set_info: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_lists: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Secret of this experiment's image URLs (experiment/delivery.py); never leaves the server.
    delivery_key: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(32))

    stimuli: Mapped[list["Stimulus"]] = relationship(back_populates="experiment", cascade="all, delete-orphan")


class Stimulus(Base):
    """One image of the imported set: the manifest row the design needs."""

    __tablename__ = "stimuli"
    __table_args__ = (UniqueConstraint("experiment_id", "stimulus_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    stimulus_id: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(512))
    source_sha256: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(16))
    pair: Mapped[str] = mapped_column(String(128), default="")
    target: Mapped[str] = mapped_column(String(64), default="")
    eps: Mapped[int] = mapped_column(Integer, default=0)
    pair_key: Mapped[str] = mapped_column(String(256), default="")
    ensemble_category: Mapped[str] = mapped_column(String(64), default="")
    ensemble_category_prob: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    #: The model set the image was made on (empty: a clean crop, or a set from before model sets).
    model_set: Mapped[str] = mapped_column(String(64), default="", server_default="")

    experiment: Mapped[Experiment] = relationship(back_populates="stimuli")


class Participant(Base):
    """A person taking part; ``token`` authenticates the browser, ``public_id`` names them in exports."""

    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("experiment_id", "prolific_pid"),
        CheckConstraint("status IN ('in_progress', 'completed', 'screened_out')", name="status"),
        Index("ix_participants_experiment_list_status", "experiment_id", "list_index", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    prolific_pid: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    study_id: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    session_id: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    list_index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    n_trials: Mapped[int] = mapped_column(Integer)
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    consented_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    browser: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    refresh_hz: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    debrief: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    catch_failures: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    #: When the server stored this participant's latest answer (the start of the next trial's server clock).
    last_answer_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    #: A rehearsal through the admin's preview link: no list slot, never exported.
    preview: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Set aside by the researcher (``advbias participants void``): frees the slot, left out of the export.
    voided_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    void_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)

    experiment: Mapped[Experiment] = relationship()
    trials: Mapped[list["Trial"]] = relationship(
        back_populates="participant", order_by="Trial.index", cascade="all, delete-orphan"
    )


class Trial(Base):
    """One planned trial of a participant's sequence, fixed when the participant is assigned."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("participant_id", "index"),
        CheckConstraint("target_side IN ('left', 'right')", name="target_side"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    condition: Mapped[str] = mapped_column(String(16))
    question: Mapped[str] = mapped_column(String(512))
    question_target: Mapped[str] = mapped_column(String(64))
    eps: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(512))
    pair_key: Mapped[str] = mapped_column(String(256), default="")
    left_stimulus_id: Mapped[str] = mapped_column(String(64))
    right_stimulus_id: Mapped[str] = mapped_column(String(64))
    left_target: Mapped[str] = mapped_column(String(64), default="")
    right_target: Mapped[str] = mapped_column(String(64), default="")
    left_condition: Mapped[str] = mapped_column(String(16))
    right_condition: Mapped[str] = mapped_column(String(16))
    target_side: Mapped[str] = mapped_column(String(5))
    presentation_ms: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    #: The model set of the trial's images, a design factor (empty: catch trials, or a set without model sets).
    model_set: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: When the trial list first handed this trial to the participant's browser.
    delivered_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)

    participant: Mapped[Participant] = relationship(back_populates="trials")
    response: Mapped[Optional["Response"]] = relationship(back_populates="trial", uselist=False)


class Response(Base):
    """The stored answer to one trial, with the browser's timing record."""

    __tablename__ = "responses"
    __table_args__ = (
        UniqueConstraint("participant_id", "idempotency_key"),
        CheckConstraint("response IN ('left', 'right')", name="response"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), unique=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    response: Mapped[str] = mapped_column(String(5))
    response_source: Mapped[str] = mapped_column(String(8))
    rt_ms: Mapped[float] = mapped_column(Float)
    onset_frame_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    offset_frame_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    fullscreen: Mapped[bool] = mapped_column(Boolean, default=False)
    blurred: Mapped[bool] = mapped_column(Boolean, default=False)
    blur_events: Mapped[int] = mapped_column(Integer, default=0)
    server_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Server time from the later of the trial's delivery and the previous answer to this answer.
    server_rt_ms: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    #: What the browser measured at the answer (CSS pixels; the image as drawn).
    window_width: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    window_height: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    screen_width: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    screen_height: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    device_pixel_ratio: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    image_px: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    #: Times the participant had left fullscreen so far, and keys ignored during this trial.
    fullscreen_exits: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    ignored_keys: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)

    trial: Mapped[Trial] = relationship(back_populates="response")


class Admin(Base):
    """An administrator account (password stored as a salted hash only)."""

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Raised by logout and by a password change: cookies issued under an older version stop working.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Throttle(Base):
    """A counter shared by every server process: login failures, participant starts per address.

    ``key`` is a keyed hash (never a raw address or user name); the count applies until
    ``window_ends``; ``blocked_until`` is set by the login back-off.
    """

    __tablename__ = "throttle"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    window_ends: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    blocked_until: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z; SQLite hands back naive datetimes, which are UTC by construction."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
