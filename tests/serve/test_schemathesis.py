"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis)."""

import subprocess
import sys
from pathlib import Path


def test_schemathesis_finds_no_5xx_and_no_schema_violations(served):
    st = Path(sys.executable).parent / "st"
    proc = subprocess.run(
        [str(st), "run", f"{served['url']}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--header", "Authorization: Bearer kf",  # its own rate-limit bucket: the fuzzer drains it
         "--max-examples", "15", "--workers", "1", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
