"""Notice, from inside a flow run, that it is being cancelled, and stop its work without waiting for Prefect.

Prefect stops a cancelled run from outside: the worker that started it sees a `Cancelling` event and
kills the run's process. That event can be missed: one that lands while the run's process is still being
started is dropped (Prefect 3.9), the run then OCRs to the end, and it stays Cancelling forever because
Cancelling may only become Cancelled. When it is seen, the kill waits for the flow's threads, which here
wait on workers or on chunk runs, so a corpus kept dispatching chunks for ~30 s after a cancel. The flow
therefore also polls its own state, and stops its workers (or chunk runs) the moment it reads Cancelling.
"""

import threading
from collections.abc import Callable
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run

_CANCELLED = frozenset({StateType.CANCELLING, StateType.CANCELLED})


class CancelWatch:
    """While open, read this flow run's state every `interval_s`; on Cancelling call `on_cancel(message)` once.

    `cancelled` tells the flow, after its work returns, to end Cancelled rather than reduce a half run.
    Outside a flow run (no id) it watches nothing.
    """

    def __init__(self, on_cancel: Callable[[str], None], interval_s: float = 5.0) -> None:
        self.on_cancel = on_cancel
        self.interval_s = interval_s
        self.cancelled = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CancelWatch":
        if flow_run_id := flow_run.get_id():
            self._thread = threading.Thread(target=self._watch, args=(UUID(flow_run_id),), daemon=True,
                                            name="ocrfleet-cancel-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._closed.set()
        if self._thread is None:
            return
        self._thread.join(timeout=self.interval_s + 30)
        if not self.cancelled.is_set():
            # Work that ended just as the run was cancelled: a run reported Completed after a cancel would
            # be refused by the server and stay Cancelling.
            with get_client(sync_client=True) as client:
                self._check(client, UUID(flow_run.get_id()))

    def _watch(self, flow_run_id: UUID) -> None:
        with get_client(sync_client=True) as client:
            while not self._closed.wait(self.interval_s):
                if self._check(client, flow_run_id):
                    return

    def _check(self, client, flow_run_id: UUID) -> bool:
        try:
            state = client.read_flow_run(flow_run_id).state
        except Exception:  # the API is briefly unreachable: Prefect's own cancel path still works
            return False
        if state is None or state.type not in _CANCELLED:
            return False
        self.cancelled.set()
        self.on_cancel(f"the flow run was cancelled ({state.name}: {state.message or 'no message'})")
        return True
