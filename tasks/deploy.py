"""Deploy: create the process work pool and every deployment in `deployments/prefect.yaml` on a Prefect server.

Plain module: it drives the `prefect` CLI in subprocesses (argument lists, never a shell), so importing it
costs nothing and a failure reads exactly as the CLI said it.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from ocrfleet.inputs.storage import is_url

log = logging.getLogger(__name__)

PREFECT_FILE = Path("deployments") / "prefect.yaml"
_PREFECT = [sys.executable, "-m", "prefect"]


class DeployError(RuntimeError):
    """Deploying cannot go on; the message says what to do."""


def deploy(repo_root: Path, *, api_url: str | None = None) -> list[str]:
    """Create the process work pools the deployments name if missing, then (re)create every deployment.

    Returns the pools. The pools come from `deployments/prefect.yaml` only: `prefect deploy --all` ignores
    `--pool` when it deploys several deployments.
    """
    repo_root = Path(repo_root).resolve()
    api_url = (api_url or configured_api_url()).rstrip("/")
    check_reachable(api_url)
    warning = open_api_warning(api_url)
    if warning:
        log.warning(warning)
    env = _cli_env(api_url)
    pools = pools_named(repo_root / PREFECT_FILE)
    for pool in pools:
        if not _pool_exists(pool, env, repo_root):
            _prefect(["work-pool", "create", pool, "--type", "process"], env, repo_root)
            log.info("created process work pool %s", pool)
    unset = unset_schedules(repo_root / PREFECT_FILE)
    with tempfile.TemporaryDirectory(prefix="ocrfleet-deploy-") as scratch:
        prefect_file = _with_schedules_off(repo_root / PREFECT_FILE, set(unset), Path(scratch))
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)], env, repo_root)
    log.info("deployed %s to %s (pools %s)", PREFECT_FILE, api_url, ", ".join(pools))
    return pools


def unset_schedules(prefect_file: Path) -> dict[str, str]:
    """Scheduled deployments whose paths are not set for this installation, each with why.

    A schedule fires unattended on whatever sits at its paths: the example's `/data/scans` is a
    placeholder until it exists here. Such schedules are deployed inactive (`ocrfleet deploy` says so).
    """
    data = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    unset = {}
    for deployment in data.get("deployments", []):
        if not any(schedule.get("active", True) for schedule in deployment.get("schedules") or []):
            continue
        config = (deployment.get("parameters") or {}).get("config") or {}
        job = config.get("job", config)  # the corpus deployment nests the job
        missing = [path for path in job.get("inputs") or [] if not is_url(path) and not Path(path).exists()]
        output = job.get("output_dir")
        if output and not is_url(str(output)) and not Path(output).parent.is_dir():
            missing.append(f"{Path(output).parent} (output_dir's parent)")
        if missing or not job.get("inputs") or not output:
            unset[deployment["name"]] = ("not on this machine: " + ", ".join(missing)) if missing else \
                "inputs or output_dir not set"
    return unset


def _with_schedules_off(prefect_file: Path, names: set[str], scratch: Path) -> Path:
    """`prefect_file`, or a copy of it in `scratch` where the schedules of `names` are inactive."""
    if not names:
        return prefect_file
    data = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    for deployment in data["deployments"]:
        if deployment["name"] in names:
            for schedule in deployment.get("schedules") or []:
                schedule["active"] = False
    copy = scratch / prefect_file.name
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def pools_named(prefect_file: Path) -> list[str]:
    """The work pools the deployments of a prefect.yaml run on, in order of first use."""
    data = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    names = [deployment["work_pool"]["name"] for deployment in data.get("deployments", [])]
    return list(dict.fromkeys(names))


def configured_api_url() -> str:
    """PREFECT_API_URL from the environment, else from the active Prefect profile; an error if unset."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        # The profile is Prefect's to read: ask it in a child, keeping this module free of Prefect.
        probe = "from prefect.settings import get_current_settings as s; print(s().api.url or '')"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env={**os.environ, "DO_NOT_TRACK": "1"}, timeout=120)
        url = done.stdout.strip() if done.returncode == 0 else ""
    if not url:
        raise DeployError("no Prefect API URL: start a server (`prefect server start`) and set "
                          "PREFECT_API_URL=http://HOST:4200/api, or pass --api-url")
    return url


def check_reachable(api_url: str, timeout_s: float = 10) -> None:
    """Raise `DeployError` unless the server's health endpoint answers (with PREFECT_API_AUTH_STRING's
    credentials when set: a reverse proxy in front of the server may ask for them on every path)."""
    try:
        request = urllib.request.Request(f"{api_url}/health", headers=auth_headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise DeployError(f"Prefect server at {api_url} is unreachable ({problem}): start it with "
                      "`prefect server start` or fix PREFECT_API_URL")


def auth_headers() -> dict[str, str]:
    """HTTP basic auth from PREFECT_API_AUTH_STRING (`user:password`), as Prefect's own client sends it."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": f"Basic {base64.b64encode(auth.encode()).decode()}"} if auth else {}


def open_api_warning(api_url: str, timeout_s: float = 10) -> str | None:
    """A warning when the API is reachable beyond this machine and answers requests that carry no credentials."""
    if is_loopback(api_url) or not accepts_anonymous(api_url, timeout_s):
        return None
    return (f"the Prefect API at {api_url} is not on loopback and accepts requests without credentials: anyone "
            "who reaches it can start runs that read and write whatever the workers can. Start the server with "
            "PREFECT_SERVER_API_AUTH_STRING, give clients PREFECT_API_AUTH_STRING, put TLS in front of it beyond "
            "a trusted network, and set the workers' allowed roots (README, section Security)")


def is_loopback(api_url: str) -> bool:
    """Whether every address the URL's host resolves to is a loopback address."""
    host = urllib.parse.urlparse(api_url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def accepts_anonymous(api_url: str, timeout_s: float = 10) -> bool:
    """Whether the API answers an authenticated endpoint (reading flow runs) without credentials; 401: it does not."""
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=b'{"limit": 1}', method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # 401/403 (HTTPError is a URLError), or no answer at all
        return False


def _cli_env(api_url: str) -> dict[str, str]:
    # DO_NOT_TRACK stops the Prefect SDK's own telemetry; deploying must not reach beyond the server.
    return {**os.environ, "PREFECT_API_URL": api_url, "DO_NOT_TRACK": "1"}


def _pool_exists(pool: str, env: dict[str, str], cwd: Path) -> bool:
    done = subprocess.run([*_PREFECT, "work-pool", "inspect", pool], env=env, cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)
    return done.returncode == 0


def _prefect(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([*_PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise DeployError(f"`prefect {' '.join(args)}` failed (exit {done.returncode}):\n{tail}")
    return output
