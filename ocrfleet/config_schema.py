"""The checks of `JobConfig`'s validators, restated as JSON Schema for the parameter schema Prefect enforces.

Prefect validates a deployment's parameters against this schema before it creates a flow run, and the
UI's form reads it: a value the config would refuse is then refused up front, with no run created.
Python keeps its own validators (clearer messages); tests hold the two to the same answers. Patterns are
written for Python's `re` (jsonschema) and ECMAScript (the UI) alike: no inline flags, so cases are spelt out.
"""

from __future__ import annotations

from typing import Any

_AUTO, _GPU, _CPU = "[aA][uU][tT][oO]", "[gG][pP][uU]", "[cC][pP][uU]"
# A GPU id list that names one id twice (as integers: 0 and 00 are the same GPU).
_REPEATED_ID = r"(?!(?:.*,)?\s*0*(\d+)\s*,(?:.*,)?\s*0*\1\s*(?:,|$))"

# What ocrfleet.plan.devices.parse_devices accepts: auto, gpu, gpu:0,2,3 (no id twice), cpu, cpu:N (N >= 1).
DEVICES_PATTERN = (rf"^\s*(?:{_AUTO}|{_GPU}(?::{_REPEATED_ID}\s*\d+\s*(?:,\s*\d+\s*)*)?|{_CPU}(?::0*[1-9]\d*)?)\s*$")

# An absolute POSIX path, or a file:// URL naming one on this machine; never another scheme's URL (an object
# store). Stricter than the config, on purpose: a deployment's run starts in the worker's checkout, where a
# relative output_dir would write silently.
_LOCALHOST = "[lL][oO][cC][aA][lL][hH][oO][sS][tT]"
OUTPUT_DIR_PATTERN = rf"^(?:/|[fF][iI][lL][eE]://(?:{_LOCALHOST})?/)"


def job_schema_rules(schema: dict[str, Any]) -> None:
    """The cross-field rules of `JobConfig._something_to_do` that JSON Schema can state, added to its schema.

    `inputs` is required (the form marks it so); only a reprocessing of failed pages (only_failed) may
    leave it empty, and that needs derived_from and excludes retry_failed. only_error_classes needs only_failed.
    """
    for name, prop in schema["properties"].items():
        schema["properties"][name] = _plain_optional(prop)
    schema.setdefault("required", [])
    if "inputs" not in schema["required"]:
        schema["required"].insert(0, "inputs")
    schema["properties"]["inputs"].pop("default", None)
    only_failed = {"properties": {"only_failed": {"const": True}}, "required": ["only_failed"]}
    retry_failed = {"properties": {"retry_failed": {"const": True}}, "required": ["retry_failed"]}
    schema["allOf"] = [{
        "if": only_failed,
        "then": {"required": ["derived_from"], "properties": {"derived_from": {"type": "string", "minLength": 1}},
                 "not": retry_failed},
        "else": {"properties": {"inputs": {"minItems": 1}, "only_error_classes": {"maxItems": 0}}},
    }]


def _plain_optional(prop: dict[str, Any]) -> dict[str, Any]:
    """A nullable field (`anyOf: [X, null]`, default null) as plain X with no default.

    The UI's form then shows an ordinary input, left empty for null, instead of a choice of types with
    "Property is type None"; Prefect's validator still accepts an explicit null for a field that is neither
    required nor defaulted (it adds the null branch back before validating).
    """
    branches = prop.get("anyOf") or []
    if len(branches) != 2 or {"type": "null"} not in branches or prop.get("default", ...) is not None:
        return prop
    [value] = [branch for branch in branches if branch != {"type": "null"}]
    rest = {key: item for key, item in prop.items() if key not in ("anyOf", "default")}
    return {**value, **rest}
