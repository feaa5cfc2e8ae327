"""The `ocrfleet` command: run, plan, devices."""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ocrfleet.config import ConfigError, JobConfig, load_config
from ocrfleet.tasks.deploy import DeployError
from ocrfleet.plan.devices import DeviceError, visible_gpus
from ocrfleet.plan.gpu_engines import gpu_engine_problems
from ocrfleet.plan.models import DEFAULT_PRESET, PRESETS, preset_engines
from ocrfleet.plan.nvml import NvmlUnavailable, nvml_inventory
from ocrfleet.inputs.listing import InputError
from ocrfleet.run.lock import RunDirBusy, check_run_dir, hold_run_dir
from ocrfleet.run.rundir import RunDirRefused
from ocrfleet.run.stopping import run_flow
from ocrfleet.plan.placement import place
from ocrfleet.policy import PolicyError, check_run
from ocrfleet.run.progress import ProgressBar
from ocrfleet.reduce.publish import is_published, publish
from ocrfleet.reduce.summary import RunSummary, counted, finished as finished_run, up_to_date

_EXPECTED = (ConfigError, DeviceError, InputError, PolicyError, RunDirBusy, RunDirRefused)
_FLOW_COMMANDS = ("run", "reprocess", "corpus")  # commands that run a Prefect flow in this process
def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", help="image/PDF/TIFF files, directories, glob patterns or manifests")
    parser.add_argument("--output", "-o", dest="output_dir", type=_output_dir,
                        help="run directory (local disk or NFS): a new or empty folder, or an earlier run's")
    parser.add_argument("--publish-to", help="after a valid run, copy its outputs to this path or URL (s3://...)")
    parser.add_argument("--config", "-c", type=Path, help="YAML config (see configs/default.yaml)")
    parser.add_argument("--devices", help="auto, gpu, gpu:0,2,3, cpu or cpu:N")
    parser.add_argument("--workers-per-device", help="shards (worker processes) per device, or auto")
    parser.add_argument("--engine", choices=["auto", "paddle", "onnxruntime"])
    parser.add_argument("--models", choices=sorted(PRESETS), help=f"model preset (default {DEFAULT_PRESET})")
    parser.add_argument("--max-failure-rate", type=float)
    parser.add_argument("--threads-per-worker", type=int)


def _output_dir(value: str) -> Path:
    if not value.strip():  # Path("") is ".": the run would land in the current directory
        raise argparse.ArgumentTypeError("empty: name a folder for the run")
    return Path(value)


def _config(args: argparse.Namespace) -> JobConfig:
    return load_config(
        args.config, inputs=tuple(args.inputs) or None, output_dir=args.output_dir, devices=args.devices,
        workers_per_device=args.workers_per_device, engine=args.engine, models=args.models,
        max_failure_rate=args.max_failure_rate, threads_per_worker=args.threads_per_worker,
        publish_to=args.publish_to, retry_failed=getattr(args, "retry_failed", False) or None,
    )


def _preflight(config: JobConfig) -> None:
    """Checks that fail in a message before Prefect starts: the inputs are listed (not opened), the output dir and
    the devices checked (`ocrfleet.run.preflight`); nothing is created."""
    from ocrfleet.run.preflight import preflight

    _check_utf8_arguments(config)
    # Missing files, empty folders, bad manifest rows: exit 2 here, not a flow's traceback.
    preflight(config, before_flow=True)


def _check_utf8_arguments(config: JobConfig) -> None:
    """A flow's Prefect parameters are JSON text, which cannot carry a name whose bytes are not UTF-8."""
    for name in (*config.inputs, str(config.output_dir), str(config.derived_from or "")):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{name!r}: a name that is not UTF-8 cannot be an argument of a run (its Prefect "
                             "parameters are JSON text); for an input give its folder, a glob or a .txt manifest "
                             "instead: files found through them may have any name") from None


def cmd_run(args: argparse.Namespace) -> int:
    config = getattr(args, "resolved", None) or _config(args)
    check_run(config, before_flow=True)  # the machine's allowed roots, before anything is created
    _preflight(config)
    finished = None
    if (Path(config.output_dir) / "summary.json").is_file():  # only a reduced run can be up to date
        with hold_run_dir(Path(config.output_dir), "ocrfleet run: up-to-date check"):
            finished = up_to_date(config)
    if finished is not None:  # nothing new since the last run: no Prefect run, no model load
        done = "the 1 page is" if finished.pages_planned == 1 else f"all {finished.pages_planned} pages are"
        print(f"ocrfleet: nothing to do: {done} done already "
              f"(results: {Path(config.output_dir) / 'results.jsonl'})")
        return _finished(config, finished)
    from ocrfleet.flows.ocr_flow import ocr_run  # Prefect is imported only by commands that run a flow
    from ocrfleet.run.launch import abort_run
    from ocrfleet.tasks.local_api import start_local_api

    run_dir = Path(config.output_dir)

    def stop(why: str) -> str:
        abort_run(run_dir, why)
        return "its workers are stopped; the same command again resumes from the records written"

    server = start_local_api()  # before the flow's thread: so that it dies with this process
    with ProgressBar(run_dir):
        state = run_flow(lambda: ocr_run(config=config, return_state=True), stop, server,
                          on_lost=lambda: _judged_by_files(config))
    if state.is_completed():
        print(f"\nresults: {run_dir / 'results.jsonl'}\nsummary: {run_dir / 'summary.json'}")
        if config.publish_to:
            print(f"published: {config.publish_to}")
        print(f"ocrfleet: {state.result().verdict()}")
        return 0
    error = state.result(raise_on_failure=False)
    if isinstance(error, _EXPECTED):  # found while planning, inside the flow: a usage error all the same
        print(f"ocrfleet: error: {error}", file=sys.stderr)
        return 2
    print(f"\nresults: {run_dir / 'results.jsonl'}\nsummary: {run_dir / 'summary.json'}")
    print(f"ocrfleet: run failed: {state.message}", file=sys.stderr)
    return 1


def _finished(config: JobConfig, finished: RunSummary) -> int:
    """Report a run the output dir says is finished (publishing it if that was left undone); its exit code."""
    if finished.valid and config.publish_to and not is_published(Path(config.output_dir), config.publish_to):
        publish(Path(config.output_dir), config.publish_to)  # the last run's publish failed or was undone
        print(f"ocrfleet: published to {config.publish_to}")
    print(f"ocrfleet: {finished.verdict()}")
    return 0 if finished.valid else 1


def _judged_by_files(config: JobConfig) -> int:
    """Without its API the run cannot finish in Prefect; its files say whether it finished all the same."""
    try:
        finished = finished_run(config)
    except Exception as exc:  # noqa: BLE001 - the verdict is "not finished", with the reason
        finished, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "its reduce had not finished"
    if finished is not None and finished.valid:
        print(f"\nresults: {Path(config.output_dir) / 'results.jsonl'}")
        return _finished(config, finished)
    print(f"ocrfleet: run interrupted ({why}); the same command again resumes from the records written",
          file=sys.stderr)
    return 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Redo a subset of an earlier run into a new output dir, with the earlier settings unless overridden."""
    from ocrfleet.config import validate_config
    from ocrfleet.plan.planning import read_plan

    try:
        earlier = read_plan(args.run_dir).config
    except OSError as exc:
        raise InputError(f"{args.run_dir}: not an ocrfleet run dir (no readable run.json: {exc})") from exc
    # Not publish_to: the new run holds only the redone pages, and would replace the earlier run's outputs there.
    data = earlier.model_dump(mode="json", exclude={"derived_from", "only_failed", "only_error_classes", "publish_to"})
    overrides = {
        "inputs": tuple(args.inputs) or None, "output_dir": args.output_dir, "devices": args.devices,
        "workers_per_device": args.workers_per_device, "engine": args.engine, "models": args.models,
        "max_failure_rate": args.max_failure_rate, "threads_per_worker": args.threads_per_worker,
        "publish_to": args.publish_to, "include_globs": tuple(args.include) or None, "derived_from": str(args.run_dir),
        "only_failed": args.failed or bool(args.error_class), "only_error_classes": tuple(args.error_class),
    }
    if args.config:  # its keys override the earlier run's settings; flags override both
        data.update(yaml.safe_load(args.config.read_text(encoding="utf-8")) or {})
    data.update({key: value for key, value in overrides.items() if value is not None})
    args.resolved = validate_config(data)
    return cmd_run(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from ocrfleet.plan.planning import make_plan

    config = _config(args)
    check_run(config)
    plan = make_plan(config).plan
    if args.json:
        print(plan.model_dump_json(indent=2))
        return 0
    for warning in plan.warnings:
        print(f"WARNING: {warning}")
    for choice in plan.choices:
        print(choice)
    done = f" ({plan.pages_skipped} already done, skipped)" if plan.pages_skipped else ""
    models = f"{plan.models.text_detection_model_name} + {plan.models.text_recognition_model_name}"
    print(f"{counted(plan.pages_total, 'page')}{done}, {counted(len(plan.shards), 'shard')}, "
          f"engine {plan.models.engine} ({models}), "
          f"{plan.threads_per_worker} thread(s) per worker")
    for spec in plan.shards:
        env = " ".join(f"{key}={value!r}" for key, value in sorted(spec.env.items()) if "THREADS" not in key)
        gpu = f" --gpu-id {spec.device.gpu_id}" if spec.device.is_gpu else ""
        print(f"  shard {spec.shard:05d}  {spec.device.name:8s} pages={spec.pages:<6d} cost={spec.cost:<12.0f} "
              f"{env}{gpu}")
    costs = [spec.cost for spec in plan.shards]
    if costs and min(costs) > 0:
        print(f"estimated imbalance (max/min shard cost): {max(costs) / min(costs):.3f}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        gpus, reason = nvml_inventory(), None
    except NvmlUnavailable as exc:
        gpus, reason = [], str(exc)
    floor = JobConfig.model_fields["min_free_memory_mb"].default
    engine = args.engine
    if engine == "auto" and "paddle" not in preset_engines(args.models):  # as a run's planning narrows it
        engine = "onnxruntime"
    placement = place(args.devices, min_free_memory_mb=floor, engine=engine)
    engines = gpu_engine_problems()
    visible = {gpu.index for gpu, _ in visible_gpus(gpus, os.environ)}
    used = {device.gpu_id for device in placement.devices}
    rows = []
    for gpu in gpus:
        why = ("used" if gpu.index in used else placement.skipped.get(gpu.index) or
               ("hidden by CUDA_VISIBLE_DEVICES / FLAGS_selected_gpus" if gpu.index not in visible
                else f"not selected by --devices {args.devices}"))
        rows.append({**gpu.model_dump(), "use": gpu.index in used, "why": why})
    if args.json:
        print(json.dumps({"gpus": rows, "nvml_error": reason, "devices": args.devices,
                          "would_use": [d.name for d in placement.devices], "engine": placement.engine,
                          "gpu_engines": engines, "warnings": placement.warnings}, indent=2))
        return 0
    if reason:
        print(f"no GPUs: {reason}")
    for row in rows:
        mig = f" MIG x{len(row['mig_devices'])}" if row["mig_enabled"] else ""
        util = f"{row['utilization_pct']}%" if row["utilization_pct"] is not None else "-"
        print(f"  gpu:{row['index']:<2d} {row['name']:24s} {row['uuid']}  {row['memory_free_mb']:>6d}/"
              f"{row['memory_total_mb']:<6d} MiB free  util {util:>4s}{mig}  {'USE ' if row['use'] else 'skip'} "
              f"{'' if row['use'] else row['why']}")
    for engine, problem in engines.items():
        print(f"GPU engine {engine}: {'usable' if problem is None else 'not usable: ' + problem}")
    for warning in placement.warnings:
        print(f"WARNING: {warning}")
    on = f" with engine {placement.engine}" if placement.engine else ""
    print(f"--devices {args.devices} would run{on}: {', '.join(device.name for device in placement.devices)}")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    """A corpus split into chunks, each an `adhoc` run on whichever machine's worker is free (docs/scale-out.md)."""
    from ocrfleet.corpus import CorpusConfig
    from ocrfleet.tasks.deploy import check_reachable, configured_api_url

    api_url = args.api_url or configured_api_url()  # chunks run on the fleet's workers: never an ephemeral API
    check_reachable(api_url)
    os.environ["PREFECT_API_URL"] = api_url
    settings = {"job": _config(args), "deployment": args.deployment, "chunks": args.chunks,
                "chunk_stall_s": args.chunk_stall_s, "chunk_attempts": args.chunk_attempts}
    try:
        config = CorpusConfig.model_validate({k: v for k, v in settings.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid corpus settings: {exc}") from None
    _check_utf8_arguments(config.job)
    check_run(config.job, before_flow=True)
    check_run_dir(Path(config.job.output_dir))
    from prefect import tags

    from ocrfleet.flows.corpus_flow import corpus_run
    from ocrfleet.tasks.corpus_tasks import corpus_tag, stop_corpus_dir

    out = Path(config.job.output_dir)

    def run() -> Any:
        with tags(corpus_tag(out)):  # so that a signal handler, or the next controller, finds this corpus run
            return corpus_run(config=config, return_state=True)

    def stop(why: str) -> str:
        stopped = stop_corpus_dir(out, why)
        return (f"the corpus run is cancelled, and its {len(stopped)} chunk run(s) still going; "
                "the same command again resumes")

    state = run_flow(run, stop)
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.json'}")
    if state.is_completed():
        print(f"ocrfleet: {state.result().verdict()}")
        return 0
    print(f"ocrfleet: corpus run failed: {state.message}", file=sys.stderr)
    return 1


def cmd_deploy(args: argparse.Namespace) -> int:
    from ocrfleet.tasks.deploy import PREFECT_FILE, deploy, unset_schedules

    root = Path(__file__).resolve().parents[1]  # a checkout (or editable install): deployments/ lives there
    pools = deploy(root, api_url=args.api_url)
    print(f"ocrfleet: work pools {', '.join(pools)} and the deployments of {root / PREFECT_FILE} are in place.\n"
          f"  GPU machines: start one worker on each, from a checkout at this same path ({root}):\n"
          f"    prefect worker start --pool {pools[0]} --limit 1\n"
          "  corpus runs need one control worker (any machine, no GPU; same checkout path and shared storage):\n"
          "    prefect worker start --pool ocrfleet-control --name control\n"
          "  stop a worker with Ctrl-C (or SIGTERM) when it has no run in flight; see docs/prefect.md section 3.")
    for name, why in unset_schedules(root / PREFECT_FILE).items():
        print(f"ocrfleet: the {name} schedule (02:00 UTC) is deployed INACTIVE: its paths are not set for this "
              f"installation ({why}). Set inputs and output_dir in {root / PREFECT_FILE} and run `ocrfleet deploy` "
              f"again, or edit them in the UI (Deployments > ocrfleet/{name} > Edit) and turn the schedule on there.")
    return 0


_WHY = {errno.EACCES: "permission denied; make it accessible to this user",
        errno.EPERM: "operation not permitted for this user",
        errno.EEXIST: "already exists (a file where a folder is needed?)",
        errno.ENOTDIR: "a part of this path is a file, not a folder", errno.EISDIR: "a folder, where a file is needed",
        errno.ENOSPC: "no space left on its file system", errno.EROFS: "on a read-only file system",
        errno.ENOENT: "no such file or folder"}


def _describe(exc: OSError) -> str:
    """An OS error as where and what went wrong: never a bare `[Errno 17] File exists`."""
    why = _WHY.get(exc.errno) or exc.strerror or str(exc)
    where = [name for name in (exc.filename, exc.filename2) if name is not None]
    action = {FileExistsError: "cannot create", PermissionError: "cannot use"}.get(type(exc), "cannot use")
    if not where:
        return f"{type(exc).__name__}: {why}"
    return f"{action} {' -> '.join(map(str, where))}: {why}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocrfleet", description="Multi-GPU batch OCR with PaddleOCR and Prefect.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="plan, OCR on every device, reduce; exit 0 only for a valid run")
    _job_arguments(run)
    run.add_argument("--retry-failed", action="store_true",
                     help="do the failed pages of the output dir again, keep every ok one; results.jsonl is updated "
                     "in place and summary.json says what was retried")
    run.set_defaults(handler=cmd_run)
    plan = commands.add_parser("plan", help="show shards, devices and worker environments; start nothing")
    _job_arguments(plan)
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=cmd_plan)
    reprocess = commands.add_parser(
        "reprocess", help="redo part of an earlier run into a new output dir: its failed pages (--failed, "
        "--error-class) or the pages of INPUTs (globs, a manifest), with new models, settings or devices")
    reprocess.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the earlier run's output dir")
    _job_arguments(reprocess)
    reprocess.add_argument("--failed", action="store_true", help="only the pages that failed in RUN_DIR")
    reprocess.add_argument("--error-class", action="append", default=[], metavar="CLASS",
                           help="only failures of this class (repeatable); implies --failed")
    reprocess.add_argument("--include", action="append", default=[], metavar="GLOB",
                           help="only inputs whose path or name matches (repeatable)")
    reprocess.set_defaults(handler=cmd_reprocess)
    devices = commands.add_parser("devices", help="GPU inventory and what a devices spec would use")
    devices.add_argument("--devices", default="auto")
    devices.add_argument("--engine", choices=["auto", "paddle", "onnxruntime"], default="auto")
    devices.add_argument("--models", choices=list(PRESETS), default=DEFAULT_PRESET,
                         help="the model preset a run would use (it decides which engines can run it)")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(handler=cmd_devices)
    corpus = commands.add_parser(
        "corpus", help="split a corpus into chunks that every GPU machine's Prefect worker takes in turn "
        "(needs a Prefect server and workers; see docs/scale-out.md)")
    _job_arguments(corpus)
    corpus.add_argument("--chunks", type=int, help="how many chunks (default 16: ~4 per machine)")
    corpus.add_argument("--chunk-stall-s", type=float, help="a chunk silent this long is presumed dead (900)")
    corpus.add_argument("--chunk-attempts", type=int, help="attempts per chunk (3)")
    corpus.add_argument("--deployment", help="the single-box deployment each chunk runs as (ocrfleet/adhoc)")
    corpus.add_argument("--api-url", help="Prefect API (default: PREFECT_API_URL or the active profile)")
    corpus.set_defaults(handler=cmd_corpus)
    deploy = commands.add_parser("deploy", help="create the Prefect work pool and the nightly/adhoc deployments")
    deploy.add_argument("--api-url", help="Prefect API (default: PREFECT_API_URL or the active profile)")
    deploy.set_defaults(handler=cmd_deploy)
    args = parser.parse_args(argv)
    if args.command in _FLOW_COMMANDS:
        # No internet is a normal place to run batch OCR: don't let Prefect's telemetry complain.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    else:  # `run` leaves logging to Prefect, which prints flow and task logs
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (*_EXPECTED, DeployError) as exc:
        print(f"ocrfleet: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ocrfleet: error: {_describe(exc)}", file=sys.stderr)
        return 2
    finally:
        if args.command in _FLOW_COMMANDS:
            # The process ends next. Exit still runs atexit handlers (Prefect's log drain, stopping its
            # temporary server); the freeze spares only the interpreter's last garbage collections over
            # Prefect's heap: on an idle 2-core box 1 s with the ephemeral API's server modules loaded and
            # 0.3 s without, several times that on a busy one.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
