"""Engine choice on GPUs: Paddle's CUDA build, else onnxruntime-gpu, else CPU with a warning naming what to install."""

import json

import pytest

from ocrfleet.config import load_config
from ocrfleet.plan.devices import DeviceError
from ocrfleet.plan.gpu_engines import choose_gpu_engine, onnxruntime_gpu_problem
from ocrfleet.plan.placement import place
from ocrfleet.plan.planning import make_plan
from ocrfleet.run.engine import onnxruntime_config
from tests.test_devices import EIGHT, inventory

NO_ORT = "the installed onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu ..."


def never() -> str | None:
    raise AssertionError("this engine must not be probed")


def placed(spec, paddle_gpu, onnxruntime_gpu, engine="auto"):
    return place(spec, env={}, inventory=inventory(EIGHT[:2]), paddle_gpu=lambda: paddle_gpu,
                 onnxruntime_gpu=onnxruntime_gpu, engine=engine)


def test_auto_on_gpus_takes_paddles_cuda_build_without_probing_onnxruntime():
    placement = placed("auto", True, never)
    assert placement.engine == "paddle" and [d.name for d in placement.devices] == ["gpu:0", "gpu:1"]


def test_auto_without_paddles_cuda_build_runs_the_gpus_on_onnxruntime_gpu(tmp_path):
    placement = placed("gpu", False, lambda: None)
    assert placement.engine == "onnxruntime" and not placement.warnings
    (tmp_path / "a.png").write_bytes(b"x" * 10)
    plan = make_plan(load_config(inputs=(str(tmp_path / "a.png"),), output_dir=tmp_path / "out"), placement).plan
    assert plan.models.engine == "onnxruntime" and plan.shards[0].device.is_gpu
    assert "-onnxruntime-" in plan.models.text_recognition_model_dir


def test_auto_with_no_gpu_engine_falls_back_to_cpu_naming_both_installs():
    placement = placed("auto", False, lambda: NO_ORT)
    assert [d.name for d in placement.devices] == ["cpu"] and placement.engine is None
    warning = placement.warnings[-1]
    assert "falling back to 1 CPU worker" in warning and "paddlepaddle-gpu" in warning and "onnxruntime-gpu" in warning


def test_gpu_devices_with_no_gpu_engine_are_refused_naming_what_to_install():
    with pytest.raises(DeviceError, match="paddlepaddle-gpu.*onnxruntime-gpu"):
        placed("gpu:0", False, lambda: NO_ORT)


def test_an_explicit_engine_runs_the_gpus_only_when_it_itself_can():
    assert placed("gpu", True, lambda: None, engine="onnxruntime").engine == "onnxruntime"
    assert placed("gpu", True, never, engine="paddle").engine == "paddle"
    fallback = placed("auto", True, lambda: NO_ORT, engine="onnxruntime")
    assert fallback.devices[0].name == "cpu" and "paddlepaddle-gpu" not in fallback.warnings[-1]
    with pytest.raises(DeviceError, match="engine paddle: the installed Paddle is CPU-only"):
        placed("gpu", False, never, engine="paddle")


def test_choice_order_is_paddle_then_onnxruntime():
    assert choose_gpu_engine("auto", lambda: "cpu-only", lambda: None) == ("onnxruntime", "")
    engine, why = choose_gpu_engine("auto", lambda: "cpu-only", lambda: "no provider")
    assert engine is None and why == "engine paddle: cpu-only; engine onnxruntime: no provider"


def test_a_cpu_build_of_onnxruntime_says_to_install_onnxruntime_gpu():
    problem = onnxruntime_gpu_problem()
    assert "no CUDAExecutionProvider" in problem and "onnxruntime-gpu" in problem


def test_a_listed_cuda_provider_counts_only_when_a_session_really_runs_on_it(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    problem = onnxruntime_gpu_problem()  # the child process has the real, CPU-only onnxruntime
    assert problem is not None and "a session on it failed" in problem


def test_onnxruntime_workers_on_a_gpu_get_the_cuda_provider_with_heuristic_conv_search(monkeypatch):
    import onnxruntime

    preloaded = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: preloaded.append(True), raising=False)
    config = onnxruntime_config("gpu:0", 4)
    assert config["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"] and preloaded
    assert config["provider_options"][0] == {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}
    assert "providers" not in onnxruntime_config("cpu", 4)


def test_devices_says_which_gpu_engines_are_usable_and_why_not(monkeypatch, capsys):
    from ocrfleet.cli import main

    monkeypatch.setattr("ocrfleet.cli.nvml_inventory", inventory(EIGHT[:1]))
    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory(EIGHT[:1]))
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: False)
    monkeypatch.setattr("ocrfleet.plan.gpu_engines.paddle_gpu_installed", lambda: False)
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: None)
    monkeypatch.setattr("ocrfleet.plan.gpu_engines.onnxruntime_gpu_problem", lambda: None)
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "GPU engine paddle: not usable: the installed Paddle is CPU-only" in out
    assert "GPU engine onnxruntime: usable" in out and "would run with engine onnxruntime: gpu:0" in out
    assert main(["devices", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "onnxruntime" and report["gpu_engines"]["onnxruntime"] is None


def test_the_gpu_benchmark_without_a_gpu_measures_nothing_and_says_so(monkeypatch, tmp_path):
    from benchmarks import gpu
    from ocrfleet.plan.nvml import NvmlUnavailable

    def no_driver():
        raise NvmlUnavailable("no NVIDIA driver / NVML: test")

    monkeypatch.setattr("ocrfleet.plan.nvml.nvml_inventory", no_driver)
    figures = gpu.measure(False, tmp_path)
    assert figures and all(f.value is None and f.met is None for f in figures)
    assert all(f.detail.startswith("not measured: no GPU in this session") for f in figures)
    monkeypatch.setattr("ocrfleet.plan.nvml.nvml_inventory", inventory(EIGHT[:1]))
    monkeypatch.setattr("ocrfleet.plan.gpu_engines.paddle_gpu_installed", lambda: False)
    assert "no GPU engine" in gpu.measure(True, tmp_path)[0].detail


def test_a_gpu_worker_on_onnxruntime_makes_every_session_on_the_cuda_provider(monkeypatch):
    """PaddleX's own onnxruntime runner gets the CUDA provider, device 0 and HEURISTIC, for every fixed shape too
    (the sessions are made on the CPU here, where no CUDA provider exists, after recording what was asked)."""
    import cv2
    import onnxruntime

    from tests.test_fixed_shapes import REAL, bundled_onnx_models

    real_session, asked = onnxruntime.InferenceSession, []

    def session(path, sess_options=None, providers=None, provider_options=None):
        asked.append((providers, provider_options))
        made = real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        made.get_providers = lambda: providers  # as a session on the GPU would answer
        return made

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    from ocrfleet.run.engine import PaddleOcrEngine

    engine = PaddleOcrEngine(bundled_onnx_models(), "gpu:0", 1, rec_batch_size=4, fixed_shapes=True)
    lines = engine(cv2.imread(str(REAL / "eurotext.png")))
    assert any("fox" in line.text for line in lines)
    assert len(asked) >= 4  # the two models' own sessions, then one per input shape
    for providers, options in asked:
        assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert options[0] == {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}


def test_a_gpu_worker_whose_onnxruntime_falls_back_to_the_cpu_is_unusable(monkeypatch):
    import onnxruntime

    from ocrfleet.run.engine import EngineUnusable, PaddleOcrEngine
    from tests.test_fixed_shapes import bundled_onnx_models

    # The CUDA provider is listed (as onnxruntime-gpu lists it without a driver) but cannot load.
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(EngineUnusable, match="fell back to CPUExecutionProvider"):
        PaddleOcrEngine(bundled_onnx_models(), "gpu:0", 1)
