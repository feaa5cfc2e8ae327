"""`auto` sizing: workers per device and fixed shapes, each said out loud by `ocrfleet plan`."""

import pytest

from ocrfleet.config import ConfigError, load_config
from ocrfleet.plan.placement import Placement, place
from ocrfleet.plan.planning import make_plan
from ocrfleet.plan.sizing import FIXED_SHAPES_REC_BATCH, GPU_WORKER_MB, fixed_shapes, workers_per_device
from tests.test_devices import EIGHT, inventory


def gpus(count, free_mb=80000):
    known = [gpu.model_copy(update={"memory_free_mb": free_mb}) for gpu in EIGHT[:count]]
    return place("gpu", env={}, inventory=inventory(known), paddle_gpu=lambda: True)


def test_auto_gives_each_gpu_its_share_of_the_cores_one_worker_per_core():
    count, why = workers_per_device("auto", gpus(2), cpus=16)
    assert count == 8 and "16 cores / 2 GPU(s) = 8" in why and "re-measured" in why


def test_auto_gives_a_gpu_no_more_workers_than_its_memory_holds():
    assert workers_per_device("auto", gpus(1, free_mb=3 * GPU_WORKER_MB), cpus=64)[0] == 3
    assert workers_per_device("auto", gpus(1, free_mb=100), cpus=64)[0] == 1


def test_auto_on_cpu_keeps_one_worker_per_device_and_a_number_is_kept():
    assert workers_per_device("auto", place("cpu:3"), cpus=16)[0] == 1
    assert workers_per_device(5, gpus(1), cpus=16) == (5, "workers_per_device: 5 per device (configured)")


def test_fixed_shapes_auto_is_on_for_gpus_and_off_on_cpu():
    assert fixed_shapes("auto", True)[0] and not fixed_shapes("auto", False)[0]
    assert fixed_shapes("on", False)[0] and not fixed_shapes("off", True)[0]


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), (8, 8), ("8", 8)])
def test_workers_per_device_takes_auto_or_a_number(value, expected, tmp_path):
    assert load_config(inputs=("a.png",), output_dir=tmp_path, workers_per_device=value).workers_per_device == expected


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_workers_per_device_refuses_other_values(value, tmp_path):
    with pytest.raises(ConfigError, match="workers_per_device"):
        load_config(inputs=("a.png",), output_dir=tmp_path, workers_per_device=value)


def test_plan_says_what_auto_chose_and_gpu_runs_get_fixed_shapes(monkeypatch, tmp_path, capsys):
    from ocrfleet.cli import main

    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory(EIGHT[:2]))
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: True)
    monkeypatch.setattr("ocrfleet.plan.sizing._cpus", lambda: 8)
    for index in range(10):
        (tmp_path / f"{index}.png").write_bytes(b"x" * (10 + index))
    assert main(["plan", str(tmp_path), "--output", str(tmp_path / "out"), "--devices", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "workers_per_device auto: 4 per GPU" in out and "fixed_shapes auto: on" in out
    assert "10 pages, 8 shards" in out


def test_cpu_runs_keep_todays_settings_and_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x" * 10)
    config = load_config(inputs=(str(tmp_path / "a.png"),), output_dir=tmp_path / "out", devices="cpu:2")
    plan = make_plan(config).plan
    assert not plan.fixed_shapes and plan.rec_batch_size == 1 and len(plan.shards) == 1
    assert plan.settings == make_plan(config.model_copy(update={"fixed_shapes": "off"})).plan.settings
    fixed = make_plan(config.model_copy(update={"fixed_shapes": "on"})).plan
    assert fixed.fixed_shapes and fixed.rec_batch_size == FIXED_SHAPES_REC_BATCH and fixed.settings != plan.settings


def test_a_placement_without_memory_figures_still_sizes_by_cores():
    placement = Placement(gpus(1).devices)
    assert workers_per_device("auto", placement, cpus=6)[0] == 6
