"""The suite's own rules: skips fail, and every test is in exactly one of `make unit` / `make e2e`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    for helper in ("fakes.py", "feedserver.py"):
        (tests / helper).write_text((ROOT / "tests" / helper).read_text())
    (tests / "test_probe.py").write_text(textwrap.dedent(body))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tests),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )


def test_a_skipped_test_fails_the_run(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        """
        import pytest

        def test_needs_a_service():
            pytest.skip("no PostgreSQL here")

        @pytest.mark.xfail(reason="known")
        def test_known_bug():
            assert False
        """,
    )
    assert done.returncode == 1, done.stdout
    assert "1 failed" in done.stdout and "1 xfailed" in done.stdout, done.stdout
    assert "no PostgreSQL here" in done.stdout


def test_unit_and_e2e_split_the_suite(tmp_path: Path) -> None:
    body = """
        import pytest

        def test_plain():
            pass

        @pytest.mark.e2e
        def test_end_to_end():
            pass

        @pytest.mark.slow
        def test_slow():
            pass
        """
    unit = _run(tmp_path, body, "-m", "unit")
    assert "1 passed, 2 deselected" in unit.stdout, unit.stdout
    (tmp_path / "again").mkdir()
    rest = _run(tmp_path / "again", body, "-m", "e2e or slow")
    assert "2 passed, 1 deselected" in rest.stdout, rest.stdout
