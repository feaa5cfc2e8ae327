import pytest

from ocrfleet.plan.devices import DeviceError, GpuInfo, MigInfo, parse_devices
from ocrfleet.plan.nvml import NvmlUnavailable
from ocrfleet.plan.placement import default_threads, launcher_warning, place, worker_env_overrides, worker_environment
from ocrfleet.plan.planning import ShardPlan
from ocrfleet.run.launch import worker_command

EIGHT = [GpuInfo(index=i, uuid=f"GPU-{i:x}{i:x}aa-0000-1111-2222-3333444455{i:02d}", name="NVIDIA H100",
                 memory_total_mb=81559, memory_free_mb=80000) for i in range(8)]


def inventory(gpus=EIGHT):
    return lambda: list(gpus)


def no_nvml():
    raise NvmlUnavailable("no NVIDIA driver / NVML: NVML Shared Library Not Found")


def placed(spec, env=None, gpus=EIGHT, paddle_gpu=True):
    return place(spec, env=env or {}, inventory=inventory(gpus), paddle_gpu=lambda: paddle_gpu)


@pytest.mark.parametrize("spec, kind, ids, cpus", [
    ("auto", "auto", None, 1), ("gpu", "gpu", None, 1), ("gpu:0,2,3", "gpu", (0, 2, 3), 1),
    ("cpu", "cpu", None, 1), ("cpu:4", "cpu", None, 4), (" GPU:1 ", "gpu", (1,), 1),
])
def test_device_specs_follow_paddleocr_convention(spec, kind, ids, cpus):
    request = parse_devices(spec)
    assert (request.kind, request.gpu_ids, request.cpu_workers) == (kind, ids, cpus)


@pytest.mark.parametrize("spec", ["tpu", "gpu:", "gpu:a", "gpu:1,1", "cpu:0", "cpu:x", "auto:1"])
def test_bad_device_specs_are_refused(spec):
    with pytest.raises(DeviceError):
        parse_devices(spec)


def test_gpu_ids_are_physical_nvml_indices_and_each_worker_sees_only_its_own():
    devices = placed("gpu:1,3").devices
    assert [(d.name, d.gpu_id, d.cuda_visible) for d in devices] == [("gpu:1", 1, "1"), ("gpu:3", 3, "3")]


def test_inherited_cuda_visible_devices_limits_the_gpus_and_keeps_its_form():
    devices = placed("gpu", env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"}).devices
    assert [d.gpu_id for d in devices] == [4, 5, 6, 7]
    uuids = ",".join(gpu.uuid for gpu in EIGHT[2:4])
    devices = placed("gpu:3", env={"CUDA_VISIBLE_DEVICES": uuids}).devices
    assert [(d.gpu_id, d.cuda_visible) for d in devices] == [(3, EIGHT[3].uuid)]


def test_a_gpu_outside_the_inherited_set_is_an_error_naming_both_sets():
    with pytest.raises(DeviceError, match=r"\[1\].*\[4, 5, 6, 7\].*CUDA_VISIBLE_DEVICES=4,5,6,7"):
        placed("gpu:1,4", env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_empty_or_minus_one_cuda_visible_devices_hides_every_gpu(hidden):
    placement = placed("auto", env={"CUDA_VISIBLE_DEVICES": hidden})
    assert [d.name for d in placement.devices] == ["cpu"]
    assert "hides every GPU" in placement.warnings[0]
    with pytest.raises(DeviceError, match="--devices cpu"):
        placed("gpu", env={"CUDA_VISIBLE_DEVICES": hidden})


def test_auto_without_a_driver_falls_back_to_one_cpu_worker_loudly():
    placement = place("auto", env={}, inventory=no_nvml, paddle_gpu=lambda: True)
    assert [d.name for d in placement.devices] == ["cpu"]
    assert "NVML Shared Library Not Found" in placement.warnings[0]


def test_gpus_with_a_cpu_only_paddle_say_what_to_install():
    with pytest.raises(DeviceError, match="paddlepaddle-gpu"):
        placed("gpu:0", paddle_gpu=False)
    assert "paddlepaddle-gpu" in placed("auto", paddle_gpu=False).warnings[0]


def test_auto_uses_every_visible_gpu():
    assert [d.gpu_id for d in placed("auto").devices] == list(range(8))


def test_gpu_worker_gets_one_gpu_pci_order_thread_limits_and_an_explicit_gpu_id(tmp_path):
    device = placed("gpu:5").devices[0]
    env = worker_env_overrides(device, threads=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    spec = ShardPlan(shard=3, device=device, env=env, pages=1, cost=1.0)
    command = worker_command(tmp_path, spec)
    assert command[1:] == ["-m", "ocrfleet.run.worker", "--run-dir", str(tmp_path), "--shard", "3", "--watch-parent",
                           "--gpu-id", "5"]


def test_cpu_workers_see_no_gpu_and_get_no_gpu_id(tmp_path):
    device = placed("cpu:2").devices[0]
    env = worker_env_overrides(device, threads=1)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "--gpu-id" not in worker_command(tmp_path, ShardPlan(shard=0, device=device, env=env, pages=1, cost=1))


def test_workers_inherit_no_launcher_state():
    parent = {"PATH": "/bin", "FLAGS_selected_gpus": "0", "PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "8",
              "PADDLE_CURRENT_ENDPOINT": "127.0.0.1:6170", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "8",
              "CUDA_VISIBLE_DEVICES": "0,1"}
    env = worker_environment(parent, {"CUDA_VISIBLE_DEVICES": "1"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    assert "inference job" in launcher_warning(parent)
    assert launcher_warning({"PATH": "/bin"}) is None


def test_threads_are_shared_out_without_oversubscribing():
    assert default_threads(2, cpus=2) == 1
    assert default_threads(3, cpus=16) == 5
    assert default_threads(8, cpus=2) == 1


MIG_GPU = GpuInfo(index=0, uuid="GPU-aaaa", name="NVIDIA A100", memory_total_mb=40960, memory_free_mb=40000,
                  mig_enabled=True, mig_devices=(MigInfo(uuid="MIG-1111-aaaa", memory_total_mb=9856, memory_free_mb=9000),
                                                 MigInfo(uuid="MIG-2222-bbbb", memory_total_mb=9856, memory_free_mb=500)))


def test_mig_instances_are_named_by_their_uuid_and_checked_for_memory():
    placement = placed("gpu", env={"CUDA_VISIBLE_DEVICES": "MIG-1111-aaaa"}, gpus=[MIG_GPU])
    assert [(d.name, d.cuda_visible, d.uuid) for d in placement.devices] == [("gpu:0", "MIG-1111-aaaa", "MIG-1111-aaaa")]
    low = place("auto", env={"CUDA_VISIBLE_DEVICES": "MIG-2222"}, inventory=inventory([MIG_GPU]),
                paddle_gpu=lambda: True, min_free_memory_mb=1024)
    assert [d.name for d in low.devices] == ["cpu"]
    assert "500 MiB free, below min_free_memory_mb=1024" in low.warnings[0]


def test_flags_selected_gpus_picks_positions_among_the_visible_gpus():
    devices = placed("gpu", env={"CUDA_VISIBLE_DEVICES": "4,5,6,7", "FLAGS_selected_gpus": "1,3"}).devices
    assert [(d.gpu_id, d.cuda_visible) for d in devices] == [(5, "5"), (7, "7")]


def test_excluded_and_busy_gpus_are_skipped_loudly():
    busy = [gpu.model_copy(update={"memory_free_mb": 300}) if gpu.index == 2 else gpu for gpu in EIGHT]
    placement = place("gpu", env={}, inventory=inventory(busy), paddle_gpu=lambda: True,
                      exclude=(0, 1), min_free_memory_mb=1024)
    assert [d.gpu_id for d in placement.devices] == [3, 4, 5, 6, 7]
    assert [w.split(" (")[0] for w in placement.warnings] == ["skipping gpu:0", "skipping gpu:1", "skipping gpu:2"]
    assert "listed in exclude" in placement.warnings[0] and "300 MiB free" in placement.warnings[2]
    with pytest.raises(DeviceError, match="every GPU was skipped"):
        place("gpu:0,1", env={}, inventory=inventory(), paddle_gpu=lambda: True, exclude=(0, 1))


def test_a_restricted_parent_is_said_out_loud():
    placement = placed("auto", env={"CUDA_VISIBLE_DEVICES": "6"})
    assert [d.gpu_id for d in placement.devices] == [6]
    assert "may use 1 of the machine's 8 GPUs" in placement.warnings[0]


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_mapping_is_the_same_on_every_platform(monkeypatch, platform):
    monkeypatch.setattr("sys.platform", platform)
    devices = placed("gpu:1,3", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}).devices
    assert [(d.gpu_id, d.cuda_visible) for d in devices] == [(1, "1"), (3, "3")]


def test_thread_budget_works_where_there_is_no_sched_getaffinity(monkeypatch):
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # as on Windows and macOS
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_threads(4) == 4


def test_plan_under_inherited_uuids_shows_each_workers_exact_env(monkeypatch, tmp_path, capsys):
    from ocrfleet.cli import main

    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory())
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: True)
    # The default preset ships only as ONNX: its GPUs run on onnxruntime-gpu, here taken as working.
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(gpu.uuid for gpu in EIGHT))
    (tmp_path / "a.png").write_bytes(b"x" * 10)
    (tmp_path / "b.png").write_bytes(b"x" * 20)
    assert main(["plan", str(tmp_path), "--output", str(tmp_path / "out"), "--devices", "gpu:1,3"]) == 0
    out = capsys.readouterr().out
    assert f"gpu:1    pages=1" in out and f"CUDA_VISIBLE_DEVICES='{EIGHT[1].uuid}'" in out and "--gpu-id 1" in out
    assert f"CUDA_VISIBLE_DEVICES='{EIGHT[3].uuid}'" in out and "--gpu-id 3" in out
    assert "CUDA_DEVICE_ORDER='PCI_BUS_ID'" in out and not (tmp_path / "out").exists()


def test_devices_without_a_driver_explains_itself_and_exits_zero(monkeypatch, capsys):
    from ocrfleet.cli import main

    monkeypatch.setattr("ocrfleet.cli.nvml_inventory", no_nvml)
    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", no_nvml)
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "no GPUs: no NVIDIA driver / NVML" in out and "--devices auto would run: cpu" in out


def test_devices_marks_what_a_run_would_use_and_why_not_the_rest(monkeypatch, capsys):
    from ocrfleet.cli import main

    busy = [gpu.model_copy(update={"memory_free_mb": 100}) if gpu.index == 5 else gpu for gpu in EIGHT]
    monkeypatch.setattr("ocrfleet.cli.nvml_inventory", inventory(busy))
    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory(busy))
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    # Paddle's CUDA build alone: the ONNX-only default preset has no GPU engine here, which devices says...
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: "no CUDA provider")
    assert main(["devices", "--devices", "gpu:4,5", "--json"]) == 2
    assert "--models pp-ocrv4-mobile" in capsys.readouterr().err
    # ...and the Paddle-format preset runs on them.
    assert main(["devices", "--devices", "gpu:4,5", "--models", "pp-ocrv4-mobile", "--json"]) == 0
    rows = {row["index"]: row for row in __import__("json").loads(capsys.readouterr().out)["gpus"]}
    assert rows[4]["use"] and not rows[5]["use"] and "100 MiB free" in rows[5]["why"]
    assert rows[6]["why"] == "not selected by --devices gpu:4,5"
    assert rows[0]["why"].startswith("hidden by CUDA_VISIBLE_DEVICES")
