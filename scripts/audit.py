"""`make audit`: pip-audit over the installed dependencies (siar itself, installed editable, is
skipped). A known vulnerability fails the build. When the vulnerability service cannot be
reached (no route, DNS failure, or a package index that knows none of the packages — as behind a
mirror that is not PyPI), one line says the dependencies were NOT audited, and the build goes on.

    .venv/bin/python scripts/audit.py [extra pip-audit arguments, e.g. -s osv]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence

UNREACHABLE = re.compile(
    r"ConnectionError|NameResolutionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Connection refused|timed out|Timeout|SSLError|ProxyError|"
    r"Network is unreachable|No route to host",
)
NOT_FOUND = "Dependency not found on PyPI"


def verdict(returncode: int, stdout: str, stderr: str) -> tuple[int, str]:
    """(exit code, one line to print) for one pip-audit run with `-f json`."""
    try:
        report = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        if returncode != 0 and UNREACHABLE.search(stderr):
            return (
                0,
                f"pip-audit: NOTICE: the vulnerability service is unreachable ({last}); "
                "dependencies NOT audited",
            )
        return 1, f"pip-audit failed (exit {returncode}): {last}"
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    if vulnerable:
        found = "; ".join(
            f"{d['name']} {d.get('version', '?')}: "
            + ", ".join(
                f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})" for v in d["vulns"]
            )
            for d in vulnerable
        )
        return 1, f"pip-audit: {len(vulnerable)} vulnerable dependencies: {found}"
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = len(deps) - len(skipped)
    not_found = [d for d in skipped if NOT_FOUND in d["skip_reason"]]
    if audited == 0 and not_found:
        return 0, (
            f"pip-audit: NOTICE: the vulnerability service knows none of the {len(deps)} installed "
            "packages (no route to PyPI's database from this machine); dependencies NOT audited"
        )
    if returncode != 0:
        return 1, f"pip-audit failed (exit {returncode}): {(stderr.strip().splitlines() or [''])[-1][:300]}"
    note = f" ({len(skipped)} skipped: {', '.join(d['name'] for d in skipped)})" if skipped else ""
    return 0, f"pip-audit: {audited} dependencies audited, no known vulnerabilities{note}"


def main(argv: Sequence[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--progress-spinner",
        "off",
        "--skip-editable",
        "--format",
        "json",
        *argv,
    ]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print(
            "pip-audit: NOTICE: the vulnerability service did not answer in 600 s; dependencies NOT audited"
        )
        return 0
    code, line = verdict(run.returncode, run.stdout, run.stderr)
    print(line, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
