"""Allowed roots: what any run may read and write, set by whoever runs the machine, never by a run's parameters.

A deployment lets anyone who can reach the Prefect API choose a run's `inputs`, `output_dir` and `publish_to`;
the workers read and write them with their own permissions and credentials. The machine's owner bounds that:

- `allowed_input_roots`: every file a run reads (each input, each manifest, every page source a manifest or
  directory names, `derived_from`, model dirs) lies under one of them, after symlinks and `..` are resolved;
  a URL starts with one of them (`s3://bucket/scans`, compared after normalizing); `derived_from` may
  also lie under an allowed output root;
- `allowed_output_roots`: `output_dir` (and `model_cache_dir` when set) lies under one of them;
- `allowed_publish_prefixes`: `publish_to`, a path or URL, lies under one of them.

They come from the machine's environment, `OCRFLEET_ALLOWED_INPUT_ROOTS`, `OCRFLEET_ALLOWED_OUTPUT_ROOTS`,
`OCRFLEET_ALLOWED_PUBLISH_PREFIXES` (entries separated by `,` or by `:` not followed by `//`), each of which
overrides the same key of the YAML file named by `OCRFLEET_POLICY_FILE`. A setting left unset checks nothing
(a YAML key set to `[]` allows nothing). Plain module: never imports Prefect.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ocrfleet.config import ConfigError, JobConfig
from ocrfleet.inputs.storage import is_url, local_path

Setting = Literal["allowed_input_roots", "allowed_output_roots", "allowed_publish_prefixes"]
SETTINGS: tuple[Setting, ...] = ("allowed_input_roots", "allowed_output_roots", "allowed_publish_prefixes")
POLICY_FILE = "OCRFLEET_POLICY_FILE"
_SEPARATOR = re.compile(r",|:(?!//)")  # `:` separates like $PATH, except in `s3://`
_GLOB = re.compile(r"[*?\[]")


class PolicyError(ValueError):
    """A run names a path or URL outside the machine's allowed roots; the message names the setting."""


class Policy(BaseModel):
    """The machine's allowed roots; None: that setting is unset and checks nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    allowed_input_roots: tuple[str, ...] | None = None
    allowed_output_roots: tuple[str, ...] | None = None
    allowed_publish_prefixes: tuple[str, ...] | None = None

    def unset(self) -> list[Setting]:
        return [name for name in SETTINGS if getattr(self, name) is None]


def load_policy(environ: Mapping[str, str] = os.environ) -> Policy:
    """The machine's policy: `OCRFLEET_POLICY_FILE`'s YAML, then the `OCRFLEET_ALLOWED_*` variables over it."""
    data: dict[str, object] = {}
    if environ.get(POLICY_FILE):
        path = Path(environ[POLICY_FILE])
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{POLICY_FILE}={path}: cannot read the policy file: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{POLICY_FILE}={path}: expected a mapping with keys {', '.join(SETTINGS)}")
    for name in SETTINGS:
        value = environ.get(f"OCRFLEET_{name.upper()}", "").strip()
        if value:
            data[name] = [entry.strip() for entry in _SEPARATOR.split(value) if entry.strip()]
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid allowed roots ({POLICY_FILE} or OCRFLEET_ALLOWED_*): {exc}") from None


def check_run(config: JobConfig, policy: Policy | None = None, *, before_flow: bool = False) -> Policy:
    """Raise `PolicyError` unless everything `config` reads and writes lies inside `policy` (default: this
    machine's); return the policy. Reads nothing but listings and manifests, writes nothing.

    `before_flow`: the CLI checks a run it is about to start in this process, whose flow then asks once more;
    that one next check is answered from this one (a flow run on its own is always checked in full).
    """
    policy = policy or load_policy()
    key = (config, policy)
    if key in _checked:
        _checked.discard(key)
        return policy
    inputs, outputs, publish = (_roots(getattr(policy, name)) for name in SETTINGS)
    if outputs is not None:
        _require(str(config.output_dir), outputs, "allowed_output_roots", "output_dir")
        if config.model_cache_dir is not None:
            _require(str(config.model_cache_dir), outputs, "allowed_output_roots", "model_cache_dir")
    if publish is not None and config.publish_to:
        _require(config.publish_to, publish, "allowed_publish_prefixes", "publish_to")
    if inputs is not None:
        if config.derived_from is not None:  # an earlier run dir: the fleet's own output is fine to read back
            _require(str(config.derived_from), inputs + (outputs or ()), "allowed_input_roots", "derived_from")
        for name in ("text_detection_model_dir", "text_recognition_model_dir"):
            if getattr(config, name) is not None:
                _require(str(getattr(config, name)), inputs, "allowed_input_roots", name)
        for spec in () if config.only_failed else config.inputs:
            _require(_spec_base(spec), inputs, "allowed_input_roots", "inputs")  # before listing anything
        for source in _planned_sources(config):
            _require(source, inputs, "allowed_input_roots", "a page source")
    if before_flow:
        _checked.add(key)
    return policy


_checked: set[tuple[JobConfig, Policy]] = set()


def inside(location: str, roots: Iterable[str]) -> bool:
    """Whether a path (symlinks and `..` resolved) or URL (normalized) lies at or under one of `roots`
    (themselves resolved by `_roots`)."""
    where = _resolved(location)
    return any(where == root or where.startswith(root.rstrip("/") + "/") for root in roots)


def _require(location: str, roots: tuple[str, ...], setting: Setting, what: str) -> None:
    if not inside(location, roots):
        allowed = ", ".join(roots) or "nothing"
        raise PolicyError(f"{what} {location} is outside this machine's {setting} ({allowed}); ask whoever runs "
                          f"the workers to allow it (OCRFLEET_{setting.upper()} or {POLICY_FILE})")


def _roots(entries: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if entries is None else tuple(_resolved(entry) for entry in entries)


def _resolved(location: str) -> str:
    location = local_path(location)
    if is_url(location):
        scheme, rest = location.split("://", 1)
        # `..` may not climb out of a prefix; a trailing or doubled `/` changes nothing.
        return f"{scheme.lower()}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(os.path.expanduser(location))


def _spec_base(spec: str) -> str:
    """What an input names before it is listed: the file, folder or manifest, or a glob's fixed folder."""
    if is_url(spec) or not _GLOB.search(spec) or Path(spec).expanduser().exists():
        return spec
    fixed = _GLOB.split(spec, 1)[0]
    return fixed if fixed.endswith("/") else (os.path.dirname(fixed) or ".")


def _planned_sources(config: JobConfig) -> list[str]:
    """Every file the run would read pages of: listed by name, as planning lists them, no document opened."""
    from ocrfleet.inputs.listing import check_inputs  # listing imports config: loaded only when a run is checked
    from ocrfleet.plan.planning import failed_pages

    if config.only_failed:
        return sorted({page.source for page in failed_pages(config)})
    return check_inputs(config.inputs, include_globs=config.include_globs, exclude_globs=config.exclude_globs,
                        manifest_path_column=config.manifest_path_column, leave_out=str(config.output_dir))
