"""The errors a user can act on. Each names the file, the field, the value and the fix."""

from __future__ import annotations


class DarkroomError(Exception):
    """Base class: something the user can fix, explained in the message.

    ``retryable`` says whether trying the same thing again can succeed (a server that was
    down, a destination that was full). Most of these errors need a person to change the
    spec, the data or the Params first, so the Airflow adapters fail such a task at once
    instead of retrying it for minutes.
    """

    retryable: bool = False


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

    retryable = True


class ParamsError(DarkroomError):
    """A run's Params (Airflow's trigger form, REST conf, ``--conf``) are not what the
    campaign accepts: the Param, the value and what it takes are named."""


class ModelError(DarkroomError):
    """A model could not be found or loaded.

    Not retryable unless raised with ``retryable=True`` (a registry that did not answer):
    a version the registry or the folder does not have stays missing on every retry."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ModelFilesMissing(ModelError):
    """The model's files (a folder, the tiny model, a profile's local base) are not on this
    machine: a CPU worker may not have them where the GPU workers do."""


class ReviewError(DarkroomError):
    """A review decision was refused (unknown asset, asset moved on, bad decision)."""
