"""Preflight: everything a run can check before it creates anything on disk.

`preflight(config)` is the one place for checks that must come before the run dir is created, its lock
taken or anything written: the CLI calls it before Prefect starts, and the `ocrfleet` and `corpus` flows
first thing (after the allowed-roots check), before `hold_run_dir`. A run refused here leaves the file system as it found it.
"""

from __future__ import annotations

from pathlib import Path

from ocrfleet.config import JobConfig
from ocrfleet.inputs.listing import check_inputs
from ocrfleet.plan.planning import failed_pages, place_for
from ocrfleet.run.lock import check_run_dir
from ocrfleet.run.rundir import is_run_dir


def preflight(config: JobConfig, *, list_inputs: bool = True, devices: bool = True, before_flow: bool = False) -> None:
    """Raise what the run would stop on (output dir, devices, inputs) while nothing is created yet.

    The inputs are listed only for a run dir not yet claimed: once a run dir exists and is marked, planning
    inside it creates nothing more before listing them itself (so a rerun lists them once, not twice).
    `before_flow`: the CLI, about to start the flow in this process, lists them whatever the run dir (so that
    a bad input exits 2 before Prefect starts), and that flow's own preflight then does not list them again.
    `devices=False` for a corpus's control machine, which places no device itself.
    """
    run_dir = Path(config.output_dir)
    check_run_dir(run_dir)
    if devices:
        place_for(config)
    if before_flow:
        _list_inputs(config)
        _listed.add(config)
    elif config in _listed:
        _listed.discard(config)
    elif list_inputs and not is_run_dir(run_dir):
        _list_inputs(config)


_listed: set[JobConfig] = set()  # runs the CLI checked a moment ago, whose flow starts in this process


def _list_inputs(config: JobConfig) -> None:
    if config.only_failed:
        failed_pages(config)
    else:  # listed, not opened: a page range naming pages a document lacks is found while planning
        check_inputs(config.inputs, include_globs=config.include_globs, exclude_globs=config.exclude_globs,
                     manifest_path_column=config.manifest_path_column, leave_out=str(config.output_dir))
