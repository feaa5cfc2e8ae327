"""The allowed-roots check as the flows run it: refused outside the roots, a warning when a deployment runs unbounded."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.context import FlowRunContext

from ocrfleet.config import JobConfig
from ocrfleet.policy import check_run


def check_allowed(config: JobConfig) -> None:
    """Raise `ocrfleet.policy.PolicyError` unless the run stays inside this machine's allowed roots.

    A run that came through a deployment had its parameters chosen by whoever reached the API: with a
    setting unset, say so in the run's log.
    """
    policy = check_run(config)
    context = FlowRunContext.get()
    through_deployment = context is not None and context.flow_run is not None and context.flow_run.deployment_id
    if through_deployment and policy.unset():
        get_run_logger().warning(
            "this run came through a deployment, and this machine sets no %s: it reads and writes wherever the "
            "run's parameters say, with the worker's permissions (README, section Security)",
            " / ".join(policy.unset()))
