"""Notice, from inside a flow run, that it is being cancelled, and stop its work without waiting for Prefect.

Prefect stops a cancelled run from outside: the worker that started it sees a `Cancelling` event and
kills the run's process. That event can be missed: one that lands while the run's process is still being
started is dropped (Prefect 3.9), the run then OCRs to the end, and it stays Cancelling forever because
Cancelling may only become Cancelled. When it is seen, the kill waits for the flow's threads, which here
wait on workers or on chunk runs, so a corpus kept dispatching chunks for ~30 s after a cancel. The flow
therefore also polls its own state, and stops its workers (or chunk runs) the moment it reads Cancelling.
"""

import contextvars
import threading
from collections.abc import Callable
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run

_CANCELLED = frozenset({StateType.CANCELLING, StateType.CANCELLED})


class CancelWatch:
    """While open, read this flow run's state every `interval_s`; on Cancelling call `on_cancel(message)` once.

    `cancelled` tells the flow, after its work returns, to end Cancelled rather than report a result the
    server would refuse. The check runs once more on closing, for a cancel that lands as the work ends.
    Outside a flow run (no id) it watches nothing.
    """

    def __init__(self, on_cancel: Callable[[str], None], interval_s: float = 5.0) -> None:
        self.on_cancel = on_cancel
        self.interval_s = interval_s
        self.cancelled = threading.Event()
        self._closed = threading.Event()
        self._fired = threading.Lock()
        self._flow_run_id: UUID | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CancelWatch":
        if flow_run_id := flow_run.get_id():
            self._flow_run_id = UUID(flow_run_id)
            # The flow's context (run id, run logger) goes with the thread: `on_cancel` may log to the run.
            self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._watch,), daemon=True,
                                            name="ocrfleet-cancel-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._closed.set()
        if self._thread is None:
            return
        self._thread.join(timeout=self.interval_s + 5)
        if not self.cancelled.is_set():
            with get_client(sync_client=True) as client:
                self._check(client, closing=True)

    def _watch(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._closed.wait(self.interval_s):
                if self._check(client):
                    return

    def _check(self, client, closing: bool = False) -> bool:
        try:
            state = client.read_flow_run(self._flow_run_id).state
        except Exception:  # the API is briefly unreachable: Prefect's own cancel path still works
            return False
        if state is None or state.type not in _CANCELLED:
            return False
        # Once only, and never from a thread that outlived its watch (a slow read): by then the flow may
        # have moved on to another run in the same process.
        if (self._closed.is_set() and not closing) or not self._fired.acquire(blocking=False):
            return True
        self.cancelled.set()
        self.on_cancel(f"the flow run was cancelled ({state.name}: {state.message or 'no message'})")
        return True
