"""How Darkroom's errors become Airflow task outcomes.

A Darkroom error says whether trying again can help (``DarkroomError.retryable``): a model
version the registry does not have, product data that fails its expectations, Params a run
does not take stay wrong on every retry, so the task fails at once (``AirflowFailException``:
no retries) with the error's own message. A server that did not answer is retried as usual.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from airflow.sdk.exceptions import AirflowFailException
from darkroom.errors import DarkroomError

F = TypeVar("F", bound=Callable)


@contextmanager
def fail_fast():
    """Re-raise a Darkroom error no retry can fix as ``AirflowFailException``. Around a task
    body: when it ends, a stop is no longer raised again in it (stopping.task_ended)."""
    try:
        yield
    except DarkroomError as exc:
        if exc.retryable:
            raise
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    finally:
        from darkroom_operators.stopping import task_ended  # SQLAlchemy's ORM: not at parse time

        task_ended()


def no_retry_for_user_errors(fn: F) -> F:
    """A task body under :func:`fail_fast`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with fail_fast():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
