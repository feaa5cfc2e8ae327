"""The temporary Prefect API server of `ocrfleet run`, started by us so that it dies with us.

Without PREFECT_API_URL, Prefect starts a temporary API server as a child process the first time a
client is made, and stops it only from an `atexit` handler: a process ended by a signal or `kill -9`
never runs it, and the server lives on with parent 1. Started here first, from the main thread,
Prefect's own look-ups find this one (it is a per-port singleton). On Linux the kernel sends it
SIGTERM when we die, however we die (`PR_SET_PDEATHSIG`; the signal is tied to the thread that forked
it, hence the main thread, which lives as long as the process). Elsewhere only the signal handlers
of `ocrfleet` stop it.
"""

import ctypes
import functools
import os
import signal
import sys
import types
from collections.abc import Callable

from prefect.server.api import server as api_server
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

# Prefect's default wait is 20 s. On a busy machine (2 cores, other jobs loading models) the server's first
# start, which creates its database, took longer than that and failed a run that would have been fine; the
# run cannot do anything without it anyway, so it waits longer unless a longer wait is configured.
_STARTUP_WAIT_S = 90

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when `parent` dies; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls it

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)

    return preexec


class _BoundServer(api_server.SubprocessASGIServer):
    """Prefect's temporary server, started with a death signal tied to this process."""

    def _run_uvicorn_command(self):
        # Prefect's method builds the command and environment; only its Popen gets the preexec_fn.
        real = api_server.subprocess
        api_server.subprocess = types.SimpleNamespace(
            Popen=functools.partial(real.Popen, preexec_fn=_dies_with(os.getpid())))
        try:
            return super()._run_uvicorn_command()
        finally:
            api_server.subprocess = real

    def lost(self) -> int | None:
        """Its exit code once it has exited while the run still needed it, else None (`stop` is Prefect's)."""
        process = self.server_process
        return process.poll() if process is not None else None


def start_local_api() -> _BoundServer | None:
    """Start the temporary API server now, unless an API URL is configured (then None)."""
    if PREFECT_API_URL.value():
        return None
    server = _BoundServer()
    server.start(timeout=max(_STARTUP_WAIT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    return server
