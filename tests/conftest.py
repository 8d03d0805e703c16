from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.registry import REGISTRY
from tests import fakes
from tests.feedserver import FeedServer

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "medcom-internasional.xml"


@pytest.fixture
def sample_bytes() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with FeedServer() as server:
        yield server


@pytest.fixture
def fake_type() -> Iterator[None]:
    """Makes `type = "fake"` (tests.fakes) a known channel type."""
    with REGISTRY.registered(fakes.PLUGIN):
        yield


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[[str], Config]:
    """Write TOML text to tmp_path/config.toml and load it."""

    def make(text: str) -> Config:
        path = tmp_path / "config.toml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return load_config(path)

    return make


# Tests that start real third-party servers (the Bluesky PDS) are end-to-end wherever they live.
E2E_FIXTURES = {"pds"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`unit` for every test that is neither `e2e` nor `slow`, so `make unit` and `make e2e`
    split the suite with nothing left out."""
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if not any(True for name in ("e2e", "slow") for _ in item.iter_markers(name=name)):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skipped test is a failed one here: a test that needs missing data or a service says so
    and fails, so CI never passes silently without it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which this suite counts as failed: {report.longrepr}"
