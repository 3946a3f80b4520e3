"""The errors a user can act on. Each names the file, the field, the value and the fix."""

from __future__ import annotations


class DarkroomError(Exception):
    """Base class: something the user can fix, explained in the message."""


class SpecError(DarkroomError):
    """A campaign spec (or a file it points at) is invalid."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Campaign spec {path} is invalid:\n{lines}")


class ValidationFailed(DarkroomError):
    """Product data failed its expectations; nothing was generated."""


class RunFailed(DarkroomError):
    """Every asset of a run failed: nothing to review or publish (the reasons are in the message)."""


class PolicyError(DarkroomError):
    """Rendered prompts broke the brand or legal policy."""


class StorageError(DarkroomError):
    """A storage URI could not be read or written."""


class ModelError(DarkroomError):
    """A model could not be found or loaded."""


class ReviewError(DarkroomError):
    """A review decision was refused (unknown asset, asset moved on, bad decision)."""
