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
