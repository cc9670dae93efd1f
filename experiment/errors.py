"""Errors the participant API answers with: each carries its HTTP status."""
from __future__ import annotations

from typing import Any


class StudyError(Exception):
    """A request that cannot be honoured; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(StudyError):
    status = 404


class Forbidden(StudyError):
    status = 403


class Conflict(StudyError):
    status = 409


