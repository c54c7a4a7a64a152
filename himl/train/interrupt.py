"""Graceful stops: Ctrl-C or SIGTERM ends a run at a step boundary, after a checkpoint.

The jitted step donates the state's buffers, so the state cannot be saved from inside an
interrupted step. The first signal therefore only asks the loop to stop after the current
step; a second Ctrl-C stops at once (the run then resumes from its last checkpoint).
"""

from __future__ import annotations

import signal
import sys
import threading


class Interrupted(KeyboardInterrupt):
    """Raised by the training loop after it saved a checkpoint on request."""


_EARLY: list[str] = []  # signals received before the training loop (`stop_at_start_up`)


def stop_at_start_up() -> None:
    """Makes Ctrl-C before the training loop stop the command, always.

    Python's own handler raises KeyboardInterrupt where the main thread happens to be; in a
    garbage-collection callback (XLA's `_xla_gc_callback`) that exception is printed as
    "Exception ignored" and dropped, and the run went on to train. This handler raises it
    too, and remembers the signal: `StopRequests` raises it again before the first step."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum, frame):
        _EARLY.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    def unraisable(hook_args, default=sys.unraisablehook):
        if not isinstance(hook_args.exc_value, KeyboardInterrupt):  # remembered above
            default(hook_args)

    signal.signal(signal.SIGINT, handle)
    sys.unraisablehook = unraisable


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into a `requested` flag (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if _EARLY:  # a Ctrl-C during start-up that Python dropped (`stop_at_start_up`)
            raise KeyboardInterrupt
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
