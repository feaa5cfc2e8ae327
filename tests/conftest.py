import os

import pytest

from tests.pages import draw_page


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Bundled models are materialized into a fresh cache, as on a new machine."""
    cache = tmp_path_factory.mktemp("ocrfleet-cache")
    os.environ["OCRFLEET_CACHE"] = str(cache)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"  # importing Prefect would otherwise try to send telemetry
    return cache


@pytest.fixture(scope="session", autouse=True)
def stop_ephemeral_api_servers():
    """Stop any API server Prefect started on its own (ephemeral mode) while pytest's output is still open:
    left to Prefect's exit hook, its "Stopping temporary server" line hits a closed stream after the summary."""
    yield
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


@pytest.fixture(scope="session")
def prefect_api():
    """A local Prefect API for the whole session (it takes ~10 s to come up)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


WORDS = {
    "alpha.png": ["Invoice 4821", "Harbor Freight"],
    "beta.png": ["Dock fees", "Pallet wrap"],
    "gamma.jpg": ["Scanner rollers", "Friday batch"],
    "sub/delta.png": ["Okafor shipment", "warehouse today"],
}


@pytest.fixture(scope="session")
def word_pages(tmp_path_factory):
    """A folder of generated pages with known words (one in a subfolder)."""
    folder = tmp_path_factory.mktemp("pages")
    for name, lines in WORDS.items():
        draw_page(folder / name, lines, size=(700, 220), font_px=36)
    return folder


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A local S3 (moto's server) for the session. s3fs here, and in every worker subprocess, reaches it through
    the standard AWS variables, which subprocesses inherit; no file of the user's AWS config is read."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": nowhere,
           "AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A new, empty bucket for one test, as its URL: `s3://t-...`."""
    import hashlib

    from ocrfleet.inputs.storage import split_url

    name = "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    fs, _ = split_url(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"
