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
