"""The temporary API server `ocrfleet run` starts for itself."""

from prefect.server.api import server as api_server
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              temporary_settings)

from ocrfleet.tasks import local_api


def _waits(monkeypatch, extra: dict | None = None) -> list[float | None]:
    asked = []
    monkeypatch.setattr(api_server.SubprocessASGIServer, "start",
                        lambda self, timeout=None: asked.append(timeout))
    with temporary_settings(updates={PREFECT_API_URL: None, **(extra or {})}):
        assert local_api.start_local_api() is not None
    return asked


def test_the_server_is_waited_for_longer_than_prefects_20_s(monkeypatch):
    # CI failed once with "Timed out while attempting to connect to ephemeral Prefect API server" on a busy
    # 2-core machine: Prefect's own default wait is too short for a run that cannot go on without it.
    assert _waits(monkeypatch, extra={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 20}) == \
        [local_api._STARTUP_WAIT_S]
    assert local_api._STARTUP_WAIT_S >= 60


def test_a_shorter_configured_wait_is_raised_and_a_longer_one_kept(monkeypatch):
    assert _waits(monkeypatch, extra={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 30}) == \
        [local_api._STARTUP_WAIT_S]
    assert _waits(monkeypatch, extra={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}) == [300]


def test_no_server_is_started_when_an_api_is_configured(monkeypatch):
    monkeypatch.setattr(api_server.SubprocessASGIServer, "start", lambda self, timeout=None: 1 / 0)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        assert local_api.start_local_api() is None
