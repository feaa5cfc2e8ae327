from pathlib import Path

import pytest
import yaml

from ocrfleet.config import ConfigError, JobConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_unknown_keys_are_errors_that_name_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [a.png]\noutput_dir: out\nworkers_per_devise: 2\n")
    with pytest.raises(ConfigError, match="workers_per_devise: unknown key"):
        load_config(path)


@pytest.mark.parametrize("key, value", [("workers_per_device", 0), ("max_failure_rate", 1.5),
                                        ("devices", "tpu:1"), ("engine", "tensorrt"), ("inputs", [])])
def test_bad_values_are_errors_that_name_the_key(key, value):
    data = {"inputs": ["a.png"], "output_dir": "out", key: value}
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        load_config(None, **data)


def test_default_yaml_holds_every_key_at_the_model_default():
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert set(data) == set(JobConfig.model_fields)
    config = load_config(ROOT / "configs" / "default.yaml")
    for name, field in JobConfig.model_fields.items():
        if not field.is_required() and name != "inputs":  # the defaults file names the bundled samples
            assert getattr(config, name) == field.default, name


def test_cli_values_override_the_file_and_none_means_unset(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [a.png]\noutput_dir: out\ndevices: cpu:3\nworkers_per_device: 2\n")
    config = load_config(path, devices="cpu:1", workers_per_device=None)
    assert config.devices == "cpu:1"
    assert config.workers_per_device == 2


def test_a_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


@pytest.mark.parametrize("settings, message", [
    ({"inputs": []}, "inputs: give at least one"),
    ({"inputs": [], "only_failed": True}, "only_failed needs derived_from"),
    ({"only_error_classes": ["Truncated"]}, "set only_failed too"),
    ({"derived_from": "out"}, "not to derived_from"),
])
def test_reprocessing_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, **{"inputs": ["a.png"], "output_dir": "out", **settings})


@pytest.mark.parametrize("settings, message", [
    ({"output_dir": "s3://bucket/out"}, "output_dir: .*not a POSIX file system.*publish_to: s3://bucket/out"),
    ({"publish_to": "out/published"}, "publish_to: a folder apart from output_dir"),
    ({"publish_to": "file:///"}, "publish_to: a folder apart from output_dir"),
    ({"inputs": ["nosuchstore://bucket/scans"]}, "inputs: .*no fsspec file system for nosuchstore://"),
    ({"inputs": ["file://host/scans"]}, "drop the host 'host'"),
])
def test_storage_settings_that_cannot_work_are_refused_saying_what_to_do(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, **{"inputs": ["a.png"], "output_dir": "out", **settings})


def test_inputs_may_be_urls_file_urls_are_paths_and_outputs_may_be_published_anywhere():
    config = load_config(None, inputs=["s3://bucket/scans/", "file:///data/scans"], output_dir="file:///data/out",
                         publish_to="s3://bucket/ocr/run1")
    assert config.inputs == ("s3://bucket/scans/", "/data/scans") and config.output_dir == Path("/data/out")
    assert config.publish_to == "s3://bucket/ocr/run1"
