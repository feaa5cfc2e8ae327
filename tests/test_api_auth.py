"""An authenticated Prefect API: deploy sends credentials and warns about an open API; a real server refuses
unauthenticated clients while the authenticated worker runs what it is given, inside its allowed roots."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import socket
import threading
import urllib.error
from collections.abc import Iterator

import pytest

from ocrfleet.tasks.deploy import accepts_anonymous, check_reachable, deploy, is_loopback, open_api_warning
from tests.pages import draw_page
from tests.prefect_server import ROOT, api_call, prefect_server, process_worker, wait_for_state


@contextlib.contextmanager
def stub_api(host: str, anonymous_ok: bool) -> Iterator[tuple[int, list[dict]]]:
    """An HTTP server answering /api/health, and /api/flow_runs/filter with 200 (or 401 without credentials)."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            seen.append({"path": self.path, **self.headers})
            if self.headers.get("Content-Length"):
                self.rfile.read(int(self.headers["Content-Length"]))
            authorized = anonymous_ok or "Authorization" in self.headers or self.path.endswith("/health")
            self.send_response(200 if authorized else 401)
            self.end_headers()
            self.wfile.write(b"[]")

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_reachability_probe_sends_prefect_api_auth_string_as_basic_auth(monkeypatch):
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "fleet:s3cret")
    with stub_api("127.0.0.1", anonymous_ok=False) as (port, seen):
        check_reachable(f"http://127.0.0.1:{port}/api")
    assert seen[0]["Authorization"] == "Basic " + base64.b64encode(b"fleet:s3cret").decode()


def test_an_api_answering_without_credentials_is_told_apart_from_one_that_asks_for_them():
    for anonymous_ok in (True, False):
        with stub_api("127.0.0.1", anonymous_ok) as (port, seen):
            assert accepts_anonymous(f"http://127.0.0.1:{port}/api") is anonymous_ok
        assert seen[0]["path"] == "/api/flow_runs/filter" and "Authorization" not in seen[0]


def test_only_loopback_apis_count_as_loopback():
    assert all(map(is_loopback, ["http://127.0.0.1:4200/api", "http://localhost:4200/api", "http://[::1]:4200/api"]))
    assert not any(map(is_loopback, ["http://192.0.2.10:4200/api", "http://10.1.2.3/api", "http://no-such.invalid/"]))


def test_an_open_api_beyond_loopback_is_warned_about_and_one_on_loopback_is_not():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the address other hosts reach
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    with stub_api("0.0.0.0", anonymous_ok=True) as (port, _):
        assert "accepts requests without credentials" in open_api_warning(f"http://{address}:{port}/api")
        assert open_api_warning(f"http://127.0.0.1:{port}/api") is None
    with stub_api("0.0.0.0", anonymous_ok=False) as (port, _):
        assert open_api_warning(f"http://{address}:{port}/api") is None


AUTH = "fleet:correct horse battery staple"


@pytest.mark.prefect_server
def test_an_unauthenticated_client_cannot_start_a_run_and_the_authenticated_worker_runs_it(
        tmp_path, monkeypatch, model_cache):
    scans, results = tmp_path / "scans", tmp_path / "results"
    draw_page(scans / "one.png", ["Fleet auth"], size=(400, 120))
    results.mkdir()  # the allowed output root: a run creates its own dir in it, never the root itself
    draw_page(tmp_path / "elsewhere" / "secret.png", ["Secret"], size=(400, 120))
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)  # what `ocrfleet deploy` and its prefect CLI runs send
    home = tmp_path / "prefect"
    with prefect_server(home / "server", PREFECT_SERVER_API_AUTH_STRING=AUTH) as api_url:
        deploy(ROOT, api_url=api_url)
        assert not accepts_anonymous(api_url)
        [adhoc] = api_call(api_url, "deployments/filter", {"deployments": {"name": {"any_": ["adhoc"]}}}, auth=AUTH)
        config = {"inputs": [str(scans)], "output_dir": str(results / "run"), "devices": "cpu:1"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            api_call(api_url, f"deployments/{adhoc['id']}/create_flow_run", {"parameters": {"config": config}})
        assert refused.value.code == 401
        adhoc_runs = {"flow_runs": {"deployment_id": {"any_": [adhoc["id"]]}}}
        assert api_call(api_url, "flow_runs/filter", adhoc_runs, auth=AUTH) == []  # nothing was created
        with process_worker(api_url, home / "worker", PREFECT_API_AUTH_STRING=AUTH,
                            OCRFLEET_ALLOWED_INPUT_ROOTS=str(scans), OCRFLEET_ALLOWED_OUTPUT_ROOTS=str(results)) as log:
            runs = {}
            for name, inputs in (("inside", str(scans)), ("outside", str(tmp_path / "elsewhere"))):
                parameters = {"config": {**config, "inputs": [inputs], "output_dir": str(results / name)}}
                run = api_call(api_url, f"deployments/{adhoc['id']}/create_flow_run", {"parameters": parameters},
                               auth=AUTH)
                runs[name] = wait_for_state(api_url, run["id"], {"COMPLETED", "FAILED", "CRASHED"}, 300, auth=AUTH)
    assert runs["inside"]["state_type"] == "COMPLETED", log.read_text()[-4000:]
    [record] = [json.loads(line) for line in (results / "inside" / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and "auth" in record["text"].lower()
    assert runs["outside"]["state_type"] == "FAILED" and not (results / "outside").exists()
    worker_log = log.read_text()
    assert "outside this machine's allowed_input_roots" in worker_log
    # Through a deployment, with allowed_publish_prefixes unset: the run's log says so.
    assert "came through a deployment, and this machine sets no allowed_publish_prefixes" in worker_log
