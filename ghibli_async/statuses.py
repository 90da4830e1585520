"""Every status an image can have, in one place: used by the SQL, the Python code and the review
page (which receives these values from the server instead of spelling them itself)."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A stage's status of one image (each stage uses the subset that applies to it)."""

    PENDING = "pending"  # waiting for this stage
    KEPT = "kept"  # filter: shows a person, goes on
    REJECTED = "rejected"  # filter (or resize: too small): never deleted, not exported
    DONE = "done"  # resize, caption: finished
    FAILED = "failed"  # this file could not be read or captioned; a rerun tries again where it can
    BLOCKED = "blocked"  # caption: refused for safety by every model tried

    def __str__(self) -> str:
        return self.value

    @property
    def sql(self) -> str:
        """The value as an SQL string literal."""
        return f"'{self.value}'"


class Override(str, Enum):
    """The user's word on a frame, which wins over the filter."""

    KEEP = "keep"
    REJECT = "reject"

    def __str__(self) -> str:
        return self.value


class VideoStatus(str, Enum):
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


TOO_SMALL = "too_small"  # the resize stage's one reason to reject a frame: below the target size
