import os
import subprocess
import sys

import pytest

from ocrfleet.config import load_config
from ocrfleet.run.engine import EngineUnusable
from ocrfleet.plan.planning import make_plan, shard_paths, write_plan
from ocrfleet.records import PageRecord, TextLine, complete_records, read_jsonl
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.worker import run_shard
from tests.pages import draw_page

BOX = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))


class NameEngine:
    """A fake engine that 'reads' each image as its width; records the calls it got."""

    calls: list = []

    def __init__(self, models, device, threads, rec_batch_size=6, fail_after=None, **options):
        self.fail_after = fail_after

    def __call__(self, image):
        NameEngine.calls.append(image.shape)
        if self.fail_after is not None and len(NameEngine.calls) > self.fail_after:
            raise EngineUnusable("CUDA error: device lost")
        return [TextLine(text=f"w{image.shape[1]}", score=1.0, box=BOX)]


@pytest.fixture
def planned(tmp_path):
    for i in range(5):
        draw_page(tmp_path / "in" / f"p{i}.png", [f"page {i}"], size=(100 + i, 40), font_px=12)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(tmp_path / "in")], output_dir=str(out), devices="cpu:1")
    write_plan(out, make_plan(config))
    NameEngine.calls = []
    return out


def test_a_corrupt_page_becomes_a_failed_record_and_the_shard_goes_on(planned):
    report = run_shard(planned, 0, engine_factory=NameEngine)
    records = {os.path.basename(r.source): r for r in read_jsonl(shard_paths(planned, 0)["records"], PageRecord)}
    assert (report.pages_ok, report.pages_failed) == (5, 1)
    assert records["broken.png"].status == "failed"
    assert records["broken.png"].error_class == "NotAnImage"
    assert records["p3.png"].text == "w103"
    assert shard_paths(planned, 0)["done"].exists()


def test_a_killed_worker_resumes_after_its_last_record(planned):
    with pytest.raises(EngineUnusable):
        run_shard(planned, 0, engine_factory=lambda *a, **k: NameEngine(*a, fail_after=3, **k))
    records_path = shard_paths(planned, 0)["records"]
    assert not shard_paths(planned, 0)["done"].exists()
    with open(records_path, "a") as handle:  # a crash in mid-write leaves a torn line
        handle.write('{"source": "/half')
    NameEngine.calls = []
    report = run_shard(planned, 0, engine_factory=NameEngine)
    assert report.pages_resumed == 4  # 3 OCR'd + broken.png (failed, not an engine call) before the crash
    assert len(NameEngine.calls) == 2
    summary = reduce_run(planned)
    assert summary.problems == [] and summary.pages_ok == 5 and summary.pages_failed == 1


def test_a_rerun_of_a_finished_shard_loads_no_model(planned):
    run_shard(planned, 0, engine_factory=NameEngine)

    def no_engine(*args, **kwargs):
        raise AssertionError("model loaded for a finished shard")

    assert run_shard(planned, 0, engine_factory=no_engine).pages_resumed == 6


def test_reduce_names_missing_duplicate_and_unplanned_records(planned):
    run_shard(planned, 0, engine_factory=NameEngine)
    path = shard_paths(planned, 0)["records"]
    lines = path.read_text().splitlines()
    stranger = PageRecord.model_validate_json(lines[0]).model_copy(update={"source": "/elsewhere.png"})
    path.write_text("\n".join(lines[1:] + [lines[2], stranger.model_dump_json()]) + "\n")
    summary = reduce_run(planned)
    problems = " | ".join(summary.problems)
    assert "duplicate record" in problems and "unplanned record /elsewhere.png" in problems
    assert "6 pages planned, 5 records" in problems
    assert not summary.valid
    assert (planned / "summary.json").exists()


def test_results_are_sorted_and_failure_rate_decides_validity(planned):
    run_shard(planned, 0, engine_factory=NameEngine)
    summary = reduce_run(planned)
    results = list(read_jsonl(planned / "results.jsonl", PageRecord))
    assert [r.key for r in results] == sorted(r.key for r in results)
    assert summary.failures_by_class == {"NotAnImage": 1}
    assert summary.failure_rate == pytest.approx(1 / 6, abs=1e-5)
    assert not summary.valid  # default max_failure_rate is 1%
    assert len(list(read_jsonl(planned / "failures.jsonl", PageRecord))) == 1


def test_a_torn_last_line_is_cut_off_never_parsed(tmp_path):
    path = tmp_path / "records.jsonl"
    record = PageRecord(source="/a.png", page=0, status="ok", shard=0, device="cpu")
    path.write_text(record.model_dump_json() + "\n" + record.model_dump_json()[:20])
    assert complete_records(path) == [record]
    assert path.read_text() == record.model_dump_json() + "\n"


def test_the_worker_process_never_imports_prefect():
    code = "import ocrfleet.run.worker, sys; assert 'prefect' not in sys.modules, 'prefect imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_worker_refuses_a_gpu_id_that_disagrees_with_the_plan(planned):
    result = subprocess.run([sys.executable, "-m", "ocrfleet.run.worker", "--run-dir", str(planned), "--shard", "0",
                             "--gpu-id", "3"], capture_output=True, text=True, env={**os.environ,
                                                                                     "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "planned on cpu" in result.stderr


@pytest.fixture
def gpu_planned(tmp_path):
    from ocrfleet.plan.placement import place
    from tests.test_devices import EIGHT, inventory

    for i in range(3):
        draw_page(tmp_path / "in" / f"p{i}.png", [f"page {i}"], size=(100 + i, 40), font_px=12)
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(tmp_path / "in")], output_dir=str(out), devices="gpu:1,3")
    placement = place("gpu:1,3", env={}, inventory=inventory(), paddle_gpu=lambda: True)
    write_plan(out, make_plan(config, placement))
    return out, EIGHT


def test_a_worker_on_the_wrong_gpu_stops_before_any_page(gpu_planned):
    from ocrfleet.run.worker import PlacementMismatch, verify_placement

    out, gpus = gpu_planned
    with pytest.raises(PlacementMismatch, match=r"planned on gpu:1 .* runs on gpu:0"):
        run_shard(out, 0, engine_factory=NameEngine, check_placement=lambda d: verify_placement(d, gpus[0], 4242))
    records = shard_paths(out, 0)["records"]
    assert not records.exists() or records.read_text() == ""


def test_the_gpu_a_worker_holds_goes_into_its_report_and_the_summary(gpu_planned):
    from ocrfleet.run.worker import verify_placement

    out, gpus = gpu_planned
    for shard, gpu in ((0, gpus[1]), (1, gpus[3])):
        report = run_shard(out, shard, engine_factory=NameEngine,
                           check_placement=lambda d, gpu=gpu: verify_placement(d, gpu, 4242))
        assert (report.gpu_uuid, report.gpu_name, report.placement_verified) == (gpu.uuid, gpu.name, True)
    summary = reduce_run(out)
    assert summary.problems == []
    assert [s.report.gpu_uuid for s in summary.shards] == [gpus[1].uuid, gpus[3].uuid]


def test_an_unverifiable_placement_is_a_warning_in_the_summary(gpu_planned):
    from ocrfleet.run.worker import verify_placement

    out, _ = gpu_planned
    for shard in (0, 1):
        run_shard(out, shard, engine_factory=NameEngine, check_placement=lambda d: verify_placement(d, None, 4242))
    summary = reduce_run(out)
    assert summary.problems == [] and len(summary.warnings) == 2
    assert "NVML lists no CUDA context" in summary.warnings[0]


def test_reduce_names_a_shard_that_ran_on_another_gpu(gpu_planned):
    from ocrfleet.run.worker import verify_placement

    out, gpus = gpu_planned
    for shard, gpu in ((0, gpus[1]), (1, gpus[3])):
        run_shard(out, shard, engine_factory=NameEngine, check_placement=lambda d, gpu=gpu: verify_placement(d, gpu, 1))
    report_path = shard_paths(out, 1)["report"]
    report_path.write_text(report_path.read_text().replace(gpus[3].uuid, gpus[1].uuid))
    problems = reduce_run(out).problems
    assert problems[0].startswith(f"shard 1: planned on gpu:3 ({gpus[3].uuid}) but ran on")
    assert problems[1:] == [f"GPU {gpus[1].uuid} ran the shards of 2 planned devices (gpu:1, gpu:3)",
                            "gpu:3: planned, but no worker ran on it"]


def test_the_engine_gets_the_detection_size_and_batch_the_plan_settled_and_they_are_part_of_the_settings(tmp_path):
    import numpy as np
    from PIL import Image

    from ocrfleet.plan.planning import make_plan, prepare_run

    Image.fromarray(np.full((40, 60, 3), 255, np.uint8)).save(tmp_path / "a.png")
    config = load_config(None, inputs=[str(tmp_path / "a.png")], output_dir=str(tmp_path / "out"), devices="cpu:1")
    seen = {}

    def factory(models, device, threads, rec_batch_size, **options):
        seen.update(options, rec_batch_size=rec_batch_size)
        return NameEngine(models, device, threads)

    prepare_run(config)
    run_shard(tmp_path / "out", 0, engine_factory=factory)
    assert seen == {"det_limit": (960, "max"), "fixed_shapes": False, "rec_batch_size": 1}
    other = config.model_copy(update={"text_det_limit_side_len": None})
    assert make_plan(other).plan.settings != make_plan(config).plan.settings  # records of one are not the other's
