"""Errors that name what to fix become `dg.Failure`s: a description and metadata in the UI, not a traceback.

A refused API key is not a bug in giftflow: the run shows which variable to fix, where it was refused, and
stops there (no retry helps). `failures_named` does that for an asset body, as a decorator (functions and
generators alike) or a context manager.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import dagster as dg

from giftflow.adapters.cardivo import CardivoKeyRefused
from giftflow.adapters.stripe import StripeKeyNotPermitted, StripeKeyRefused

NAMED = (StripeKeyRefused, StripeKeyNotPermitted, CardivoKeyRefused)


def _failure(exc: Exception) -> dg.Failure:
    text = str(exc)
    variable = "CARDIVO_API_KEY" if isinstance(exc, CardivoKeyRefused) else "STRIPE_API_KEY"
    status = getattr(exc, "status", None) or getattr(exc, "http_status", None) or 0
    return dg.Failure(description=text, allow_retries=False, metadata={"variable": variable, "status": status})


@contextlib.contextmanager
def failure_context() -> Iterator[None]:
    try:
        yield
    except NAMED as exc:
        raise _failure(exc) from None


def failures_named(fn):
    """Decorate an asset's body (below `@dg.asset`): a refused key fails the step with a `dg.Failure` naming the
    variable (description, metadata), instead of an exception and its traceback."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with failure_context():
                yield from fn(*args, **kwargs)

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        with failure_context():
            return fn(*args, **kwargs)

    return function
