"""Fixtures for the OpenAI compatibility suite.

Every test talks to a real `stead serve` process through the official SDKs, unchanged:
`openai.OpenAI(base_url=..., api_key="unused")`. Stead runs with no API keys (so no auth, loopback
only), a fresh data dir, and two model routes onto its deterministic in-process model:

  scripted*  -> scripted        (answers at once)
  slow*      -> scripted:200    (200 ms between streamed chunks, for background/crash tests)

`STEAD_BIN` names the binary (`.ci/compat.sh` builds it); `STEAD_MCP_EVERYTHING` the entry of
@modelcontextprotocol/server-everything (`eval "$(bash .ci/mcp-servers.sh)"`), without which the
MCP tests are skipped (they fail instead under `STEAD_REQUIRE_ALL_TESTS=1`, which `.ci/compat.sh`
sets).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

ROUTES = ["scripted*=scripted", "slow*=scripted:200"]
START_TIMEOUT = 30.0

# Every server started by a fixture, so a failing test's report can show their logs.
_LIVE: list["SteadServer"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stead_bin() -> str:
    b = os.environ.get("STEAD_BIN")
    if not b:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/stead-target"))
        b = os.path.join(target, "release", "stead")
    if not os.path.isfile(b):
        pytest.exit(f"stead binary not found at {b}: build it (cargo build --release -p stead) or set STEAD_BIN", 2)
    return b


class SteadServer:
    """A `stead serve` child process on a fixed loopback port and data dir, which can be
    SIGKILLed and started again on the same port and data dir."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = workdir / "stead.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [stead_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        for r in ROUTES:
            cmd += ["--model-route", r]
        # The MCP server of these tests is on loopback: Stead allows that by default while it
        # listens on loopback only (no --mcp-url-allow needed).
        return cmd + self.extra_args

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log = open(self.log_path, "ab")
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "STEAD_LOG": os.environ.get("STEAD_LOG", "info")},
            )
            log.close()
            if self._wait_ready(deadline):
                return
            # Exited early: after a SIGKILL the port can take a moment to be free again.
            if time.monotonic() > deadline:
                raise RuntimeError(f"stead serve did not become ready; log:\n{self.log_tail()}")
            time.sleep(0.2)

    def _wait_ready(self, deadline: float) -> bool:
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"stead serve did not answer GET /v1/models within {START_TIMEOUT}s; log:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush beyond what was already committed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL, then start again on the same port and data dir."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(line if len(line) <= 400 else line[:400] + " [...]" for line in tail)
        except OSError:
            return "(no log)"

    def client(self, **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.base_url, api_key="unused", **kw)

    def async_client(self, **kw) -> openai.AsyncOpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", **kw)


def _new_server(tmp_root: Path, name: str) -> SteadServer:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
    s = SteadServer(workdir)
    _LIVE.append(s)
    s.start()
    return s


@pytest.fixture(scope="session")
def _tmp_root():
    d = Path(tempfile.mkdtemp(prefix="stead-compat-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(_tmp_root) -> SteadServer:
    """One server for the tests that only create fresh objects (most of them)."""
    s = _new_server(_tmp_root, "shared")
    yield s
    s.stop()
    _LIVE.remove(s)


@pytest.fixture
def own_server(_tmp_root) -> SteadServer:
    """A server of the test's own, for tests that kill and restart it."""
    s = _new_server(_tmp_root, "own")
    yield s
    s.stop()
    _LIVE.remove(s)


@pytest.fixture
def client(server) -> openai.OpenAI:
    c = server.client()
    yield c
    c.close()


@pytest.fixture(scope="session")
def mcp_url(_tmp_root) -> str:
    """@modelcontextprotocol/server-everything over Streamable HTTP on a free loopback port."""
    # Under STEAD_REQUIRE_ALL_TESTS=1 (.ci/compat.sh sets it) a missing server fails the test.
    skip = pytest.fail if os.environ.get("STEAD_REQUIRE_ALL_TESTS") == "1" else pytest.skip
    entry = os.environ.get("STEAD_MCP_EVERYTHING")
    if not entry:
        skip('STEAD_MCP_EVERYTHING is unset: run eval "$(bash .ci/mcp-servers.sh)" first (or use .ci/compat.sh)')
    if not os.path.isfile(entry):
        skip(f"STEAD_MCP_EVERYTHING={entry} does not exist")
    node = shutil.which("node")
    if node is None:
        skip("node is not installed")
    port = free_port()
    log = open(_tmp_root / "mcp-everything.log", "ab")
    proc = subprocess.Popen(
        [node, entry, "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"MCP everything server exited with {proc.returncode}; see {_tmp_root}/mcp-everything.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("MCP everything server did not listen within 30 s")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _LIVE:
        for s in _LIVE:
            rep.sections.append((f"stead serve log ({s.workdir.name}, port {s.port})", s.log_tail(40)))
