"""The parameter schema Prefect enforces before creating a run refuses what JobConfig refuses, and accepts
what it accepts, as Prefect's own validator reads it (no server needed; test_prefect_ops proves the server)."""

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from ocrfleet.config import ConfigError, validate_config
from ocrfleet.flows.ocr_flow import ocr_run

SCHEMA = parameter_schema(ocr_run).model_dump()

GOOD = {"inputs": ["a.png"], "output_dir": "/data/out"}

CASES = [
    {"devices": "tpu:3"}, {"devices": "gpu:"}, {"devices": "gpu:0,0"}, {"devices": "gpu:1, 01"},
    {"devices": "gpu:a"}, {"devices": "cpu:0"}, {"devices": "cpu: 2"}, {"devices": "auto:1"}, {"devices": ""},
    {"devices": "auto"}, {"devices": " GPU "}, {"devices": "gpu:0,2,3"}, {"devices": "gpu: 1 , 10 ,11"},
    {"devices": "gpu:1,11"}, {"devices": "Cpu:4"}, {"devices": "cpu:01"}, {"devices": "cpu"},
    {"output_dir": "s3://bucket/out"}, {"output_dir": "file:///data/out"}, {"output_dir": "file://otherhost/data"},
    {"workers_per_device": 0}, {"max_failure_rate": 1.5}, {"engine": "tensorrt"}, {"outputs": ["pdf"]},
    {"inputs": []}, {"inputs": None}, {"only_error_classes": ["NotAnImage"]},
    {"inputs": [], "only_failed": True}, {"inputs": [], "only_failed": True, "derived_from": "/data/first"},
    {"inputs": [], "only_failed": True, "derived_from": "/data/first", "only_error_classes": ["NotAnImage"]},
    {"retry_failed": True}, {"inputs": [], "only_failed": True, "derived_from": "/data/first", "retry_failed": True},
    {"text_recognition_batch_size": None}, {"text_recognition_batch_size": 0}, {"pdf_dpi": 20},
]


def config_accepts(data: dict) -> bool:
    try:
        validate_config(data)
    except ConfigError:
        return False
    return True


def schema_accepts(data: dict) -> bool:
    return not validate({"config": data}, SCHEMA)


@pytest.mark.parametrize("change", CASES, ids=repr)
def test_the_parameter_schema_refuses_exactly_what_the_config_refuses(change):
    data = {**GOOD, **change}
    assert schema_accepts(data) == config_accepts(data)


def test_inputs_are_marked_required_in_the_form():
    assert "inputs" in SCHEMA["definitions"]["JobConfig"]["required"]
    assert not schema_accepts({"output_dir": "/data/out"})


def test_a_relative_output_dir_is_refused_for_runs_through_a_deployment():
    """Stricter than the config on purpose: a deployment's run would write into the worker's checkout."""
    assert config_accepts({**GOOD, "output_dir": "out/adhoc"})
    assert not schema_accepts({**GOOD, "output_dir": "out/adhoc"})


def test_fields_that_default_to_null_show_as_plain_inputs_and_still_take_null():
    properties = SCHEMA["definitions"]["JobConfig"]["properties"]
    assert "anyOf" not in properties["text_recognition_batch_size"] and "default" not in properties["publish_to"]
    assert properties["text_recognition_batch_size"]["type"] == "integer"
    assert schema_accepts({**GOOD, "publish_to": None, "text_recognition_batch_size": None})
    assert not schema_accepts({**GOOD, "text_recognition_batch_size": 0})
