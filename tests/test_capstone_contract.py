"""The capstone's OpenAPI contract, checked by schemathesis against the real service.

The service runs in its own uvicorn process (with its connection guards), its upstream is the
course's `FakeServer`, and `schemathesis run` generates requests from `/openapi.json`, valid
and invalid, running its default checks on every answer: no 5xx, every status, header and
body as the schema documents them, schema-valid data accepted, invalid data refused, 405 with
`Allow` for undocumented methods. Examples are bounded per operation (and the seed fixed, so a
failure reproduces); the run takes about ten seconds on a quiet machine.

(The CLI, not schemathesis's pytest plugin: the plugin's lazy `from_fixture` loader, needed
for a schema served by a process the test starts, does not run on pytest 9.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_capstone_process import running, service_command

from labsupport import FakeServer
from labsupport.network import free_port

MAX_EXAMPLES = 30  # per operation and phase
SEED = 1


@pytest.mark.slow
def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    with FakeServer(latency=0.0) as upstream:
        port = free_port()
        command = service_command(port, tmp_path / "audit.sqlite3", upstream.base_url)
        with running(command, tmp_path / "service.log", port) as service:
            result = subprocess.run(
                [
                    *(sys.executable, "-m", "schemathesis.cli", "run"),
                    f"{service.url}/openapi.json",
                    *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)),
                    *("--workers", "1", "--no-color", "--generation-database", "none"),
                    *("--request-timeout", "30"),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        calls = upstream.stats.calls
    print(result.stdout[-3000:])
    cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)

    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout
    assert cases is not None and int(cases[1]) == int(cases[2]) > 100
    assert calls > 0  # schema-valid requests really reached the upstream
