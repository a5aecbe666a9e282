"""Structured logs go to the stderr of the moment: a process that swaps its stderr after logging was
configured (pytest's capture closes each test's stream) must not fail on its next warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SWAPPED = """
import io, sys
from core import logs
first = io.StringIO()
sys.stderr, real = first, sys.stderr
logs.configure(json=True, level="INFO")
first.close()  # as pytest closes a finished test's capture
sys.stderr = real
logs.get("test").warning("still heard", where="second")
"""


def test_logs_follow_stderr_when_it_is_swapped() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SWAPPED], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert '"still heard"' in out.stderr and '"where": "second"' in out.stderr
