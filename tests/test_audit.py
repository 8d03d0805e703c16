"""`make audit` (scripts/audit.py): a known vulnerability fails the build; an unreachable
vulnerability service is one notice line and the build goes on; anything else fails clearly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parent.parent


def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(*deps: dict[str, object]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


def test_a_known_vulnerability_fails_the_build_naming_it() -> None:
    out = report(
        {"name": "httpx", "version": "0.27.0", "vulns": []},
        {
            "name": "jinja2",
            "version": "3.1.2",
            "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": []}],
        },
    )
    code, line = audit().verdict(1, out, "Found 1 known vulnerability in 1 package")
    assert code == 1
    assert "jinja2 3.1.2" in line and "GHSA-h5c8-rqwp-cp95" in line and "3.1.3" in line


def test_a_clean_audit_passes() -> None:
    out = report(
        {"name": "httpx", "version": "0.27.0", "vulns": []}, {"name": "siar", "skip_reason": "editable"}
    )
    code, line = audit().verdict(0, out, "No known vulnerabilities found")
    assert code == 0 and "1 dependencies audited, no known vulnerabilities" in line


def test_no_route_to_the_service_is_a_notice_and_the_build_goes_on() -> None:
    stderr = (
        "Traceback (most recent call last):\n...\nrequests.exceptions.ConnectionError: "
        "HTTPSConnectionPool(host='api.osv.dev', port=443): Max retries exceeded"
    )
    code, line = audit().verdict(1, "", stderr)
    assert code == 0 and line.startswith("pip-audit: NOTICE") and "NOT audited" in line
    assert "\n" not in line


def test_an_index_that_knows_no_package_is_not_a_clean_audit() -> None:
    """Behind a mirror that is not PyPI every package is 'not found': pip-audit exits 0 and says
    'No known vulnerabilities found'; that must not read as audited."""
    out = report(
        {
            "name": "httpx",
            "skip_reason": "Dependency not found on PyPI and could not be audited: httpx (0.28)",
        },
        {"name": "siar", "skip_reason": "Dependency not found on PyPI and could not be audited: siar (0.1)"},
    )
    code, line = audit().verdict(0, out, "No known vulnerabilities found")
    assert code == 0 and "NOTICE" in line and "NOT audited" in line


def test_another_pip_audit_failure_fails_the_build() -> None:
    code, line = audit().verdict(
        2, "", "usage: pip-audit [-h]\npip-audit: error: unrecognized arguments: --bogus"
    )
    assert code == 1 and "unrecognized arguments" in line
