"""Stopping a command's flow: SIGINT/SIGTERM, and a temporary API server lost under it, end it within seconds.

`run_flow` runs a flow in a thread while the main thread keeps the signals: in the main thread, Prefect's
engine turns them into exceptions that unwind only once every task thread has returned (workers ran their
whole shards), then reports to an API that Ctrl-C may have stopped. Plain module: it never imports Prefect.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP_BUDGET_S = 10.0  # the longest a stop waits on the Prefect API before the process exits anyway


class _Stop(BaseException):
    """SIGINT or SIGTERM, raised in the main thread while it waits for the flow's thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _exit_now(signum: int, frame: object) -> None:
    os._exit(128 + signum)  # a second signal while stopping: the user means now


def _exit(code: int) -> NoReturn:
    """End the process at once: Prefect's exit handlers would retry logs and states against an API that may be
    gone (that held the exit for minutes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _bounded(action: Callable[[], str], timeout_s: float = _STOP_BUDGET_S) -> str:
    """`action()`'s message, or why there is none: an unreachable API must not hold a stop."""
    outcome: list[str] = []

    def attempt() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # the stop goes on: the process exits all the same
            outcome.append(f"could not finish ({type(exc).__name__}: {exc})")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer from the Prefect API within {timeout_s:g}s"


class LocalApi(Protocol):
    """The temporary API server a run started (`ocrfleet.tasks.local_api`), as watched here."""

    def lost(self) -> int | None: ...  # its exit code once it has exited under the run, else None
    def stop(self) -> None: ...


def run_flow(call: Callable[[], Any], on_stop: Callable[[str], str], server: LocalApi | None = None,
             on_lost: Callable[[], int] | None = None) -> Any:
    """Run the flow `call` in a thread; the main thread keeps SIGINT/SIGTERM and watches the local API server.

    In the main thread, Prefect's engine turns these signals into exceptions that unwind only once every
    task thread has returned (workers ran their whole shards), then reports to an API that Ctrl-C may
    have stopped. Here a signal runs `on_stop(reason)` (stop the work; its message is printed), stops the
    temporary API server and exits 128+signal within seconds. A temporary API server that exits under
    the run stops the work the same way, then `on_lost()` judges the run from its files and gives the
    exit code.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["state"] = call()
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ocrfleet-flow", daemon=True)
    try:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _raise_stop)
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            if server is not None and thread.is_alive() and (code := server.lost()) is not None:
                for signum in _STOP_SIGNALS:
                    signal.signal(signum, _exit_now)
                print(f"\nocrfleet: the temporary Prefect API server exited (code {code}) during the run; "
                      f"{_bounded(lambda: on_stop('the Prefect API server is gone'))}", file=sys.stderr)
                _exit(on_lost() if on_lost is not None else 1)
    except _Stop as stop:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _exit_now)
        name = signal.Signals(stop.signum).name
        print(f"\nocrfleet: {name}: stopping", file=sys.stderr, flush=True)
        done = _bounded(lambda: on_stop(f"stopped by {name}"))
        if server is not None:
            server.stop()
        print(f"ocrfleet: stopped by {name}: {done}", file=sys.stderr)
        _exit(128 + stop.signum)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["state"]
