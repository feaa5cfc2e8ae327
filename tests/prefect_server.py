"""A real Prefect server and process worker for tests: started in their own sessions, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PREFECT = [sys.executable, "-m", "prefect"]


def quiet_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment with its own PREFECT_HOME and every phone-home switched off."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",  # the SDK's own telemetry (Amplitude) reads this, not the server setting
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_tree(process: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop a process and everything it started, even children that left its process group."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    psutil.wait_procs(family, timeout=grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)


def wait_healthy(api_url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.3)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout_s:g}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def prefect_server(home: Path, **settings: str) -> Iterator[str]:
    """Run `prefect server start` on a free local port with sqlite under `home`; yield its API URL.

    `settings`: more `PREFECT_*` environment for the server.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = quiet_env(home, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                    PREFECT_UI_ENABLED="false", **settings)
    log = home / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                    "--analytics-off", "--no-ui"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api_url, process, log)
        yield api_url
    finally:
        stop_tree(process)


@contextlib.contextmanager
def process_worker(api_url: str, home: Path, name: str = "test-worker", pool: str = "ocrfleet",
                   cwd: Path = ROOT, **settings: str) -> Iterator[Path]:
    """Run `prefect worker start` for `pool` (limit 1) at `cwd`; yield its log file; stop it and its runs.

    `settings`: more environment for the worker (`PREFECT_*` settings, `OCRFLEET_ALLOWED_*`).
    """
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"worker-{name}.log"
    env = quiet_env(home, PREFECT_API_URL=api_url, **settings)
    with open(log, "wb") as out:
        process = subprocess.Popen([*PREFECT, "worker", "start", "--pool", pool, "--name", name, "--limit", "1"],
                                   cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield log
    finally:
        stop_tree(process)


def api_call(api_url: str, path: str, body: dict | None = None, auth: str | None = None) -> object:
    """GET (or POST `body` as JSON to) `api_url/path` and return the decoded JSON.

    `auth`: `user:password` for a server started with PREFECT_SERVER_API_AUTH_STRING (HTTP basic auth).
    """
    import base64
    import json

    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Basic {base64.b64encode(auth.encode()).decode()}"
    request = urllib.request.Request(f"{api_url}/{path.lstrip('/')}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def prefect_cli(api_url: str, home: Path, *args: str, timeout_s: float = 120, **settings: str) -> str:
    """Run the `prefect` CLI against the server; return its output, raising with it on a non-zero exit.

    `settings`: more `PREFECT_*` environment for the CLI (PREFECT_API_AUTH_STRING).
    """
    done = subprocess.run([*PREFECT, *args], env=quiet_env(home, PREFECT_API_URL=api_url, **settings), cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def wait_for_state(api_url: str, flow_run_id: str, states: set[str], timeout_s: float,
                   auth: str | None = None) -> dict:
    """Poll the flow run until its state type is one of `states`; return the run."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = api_call(api_url, f"flow_runs/{flow_run_id}", auth=auth)
        if run["state_type"] in states or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def run_artifacts(api_url: str, flow_run_id: str) -> list[dict]:
    """Every artifact of the flow run."""
    return api_call(api_url, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
