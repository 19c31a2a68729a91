"""Progress events: a stage says what it has done; a listener, if any, hears it.

Stages call `emit(stage, **fields)` (train: step and loss; label: samples done and
cost so far). Nothing happens unless a listener is set for the current context with
`listening(fn)`; `kolm server` sets one per job to stream progress and to stop a
cancelled job at its next step. This module knows nothing of bars, HTTP or jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Listener = Callable[[dict], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("kolm_progress", default=None)


def emit(stage: str, **fields) -> None:
    """Tell the current listener (if any) what `stage` has done; it may raise to stop."""
    listener = _LISTENER.get()
    if listener is not None:
        listener({"stage": stage, **fields})


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the events emitted in this context (threads and asyncio tasks it starts) to
    `listener`."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
