"""Run the agent the way a user does (a separate `python ib_data_agent.py` process) against the fakes.

Reusable by end-to-end tests, benchmarks and reliability runs:

    with AgentStack(key="k") as stack:          # FakeTWS + FakeRelay in-process, agent as a process
        stack.relay.request("quote", {"tickers": ["AAPL"]})
        stack.tws.drop_all()
        print(stack.agent.output)

Pieces can also be used alone: AgentProcess (any command line, env, working directory),
ServerProcess (a fake started with `python -m tests.fake_tws|fake_relay`), RelayClient (the fake
relay's HTTP API, for a relay running as a process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from agent.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_KEY = "e2e-KEY-8c1d4f6a2b9e"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A port nothing listens on right now (for "the server is not running yet")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OutputCapture:
    """Collects a pipe's lines on a thread, so a test can wait for one without blocking the process."""

    def __init__(self, stream, name: str):
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), name=f"capture-{name}", daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        stream.close()

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, process: Optional[subprocess.Popen] = None) -> re.Match:
        """The first match of the regex pattern in the output; TimeoutError (with the output) if none."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                exited = process is not None and process.poll() is not None and not self._thread.is_alive()
                match = compiled.search("".join(self.lines))
                if match:
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or exited:
                    why = f"the process exited ({process.returncode})" if exited else f"{timeout:g} s passed"
                    raise TimeoutError(f"{pattern!r} not seen and {why}; output:\n" + "".join(self.lines)[-4000:])
                self._changed.wait(min(left, 0.2))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ManagedProcess:
    """A child process with stdout and stderr captured separately; stop() sends SIGTERM, then kills."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.stdout: Optional[OutputCapture] = None
        self.stderr: Optional[OutputCapture] = None

    def start(self) -> "ManagedProcess":
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.stdout = OutputCapture(self.process.stdout, "stdout")
        self.stderr = OutputCapture(self.process.stderr, "stderr")
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        """stdout then stderr, as captured so far."""
        return (self.stdout.text if self.stdout else "") + (self.stderr.text if self.stderr else "")

    def wait_for_output(self, pattern: str, timeout: float = 30.0, stream: str = "stdout") -> re.Match:
        return getattr(self, stream).wait_for(pattern, timeout, self.process)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.stdout.join(5)
        self.stderr.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM and wait; a process that does not exit in time is killed (and the result is None)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.wait(10)
            return None


class ServerProcess(ManagedProcess):
    """A fake started from its command line; start() returns the port it printed."""

    def __init__(self, module: str, args: Sequence[str] = (), port: int = 0, cwd: Path = ROOT):
        super().__init__([PYTHON, "-u", "-m", module, "--port", str(port), *args], cwd=cwd)
        self.port: Optional[int] = None

    def start(self, timeout: float = 20.0) -> int:
        super().start()
        self.port = int(self.wait_for_output(LISTENING.pattern, timeout).group(1))
        return self.port


class RelayClient:
    """The fake relay's HTTP API (DESIGN.md 6), for a relay running in another process."""

    class Error(Exception):
        def __init__(self, status: int, body: Any):
            super().__init__(f"HTTP {status}: {body}")
            self.status = status
            self.body = body

    def __init__(self, port: int, key: str, host: str = "127.0.0.1"):
        self.base = f"http://{host}:{port}"
        self.key = key
        self.url = f"ws://{host}:{port}/ws/agent"

    def _call(
        self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 30.0, auth: bool = False
    ) -> Any:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if auth:
            request.add_header("Authorization", f"Bearer {self.key}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise self.Error(exc.code, exc.read().decode("utf-8", "replace")) from None

    def request(
        self, action: str, params: Optional[dict] = None, id: Optional[str] = None, timeout_s: float = 30
    ) -> dict:
        body = {"action": action, "params": params or {}, "timeout_s": timeout_s}
        if id:
            body["id"] = id
        return self._call("POST", "/api/request", json.dumps(body).encode(), timeout_s + 10, auth=True)

    def status(self) -> dict:
        return self._call("GET", "/api/status")

    def send_raw(self, text: str) -> None:
        self._call("POST", "/api/raw", text.encode("utf-8"))

    def drop(self) -> bool:
        return self._call("POST", "/api/drop")["dropped"]

    def cancel(self, request_id: str) -> None:
        self._call("POST", f"/api/cancel/{request_id}")

    def frames(self) -> dict:
        """GET /api/frames: {"frames": every frame from the agent, "violations": [...]}."""
        return self._call("GET", "/api/frames")

    def progress(self, request_id: str) -> List[dict]:
        return self._call("GET", f"/api/progress/{request_id}")["progress"]

    def wait_hello(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hello = self.status()["hello"]
            if hello:
                return hello
            time.sleep(0.1)
        raise TimeoutError(f"no hello within {timeout:g} s")


def agent_env(
    key: str, relay_url: str, ib_port: Optional[int], data_dir: Path, extra: Optional[Dict[str, str]] = None
) -> Dict[str, str]:
    """The process environment minus every agent variable the caller may have exported, plus ours."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        IB_PROVIDER_KEY=key,
        RELAY_URL=relay_url,
        IB_HOST="127.0.0.1",
        AGENT_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    if ib_port is not None:
        env["IB_PORT"] = str(ib_port)
    env.update(extra or {})
    return env


class AgentProcess(ManagedProcess):
    """`python ib_data_agent.py` in its own process, with its own data folder (log file) and an empty
    config file (so a developer's config.env never leaks in; `config_file=None` reads the default)."""

    def __init__(
        self,
        key: str,
        relay_url: str,
        ib_port: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        args: Iterable[str] = (),
        command: Optional[Sequence[str]] = None,
        cwd: Optional[Path] = None,
        data_dir: Optional[Path] = None,
        isolated_config: bool = True,
    ):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="agent-data-"))
        self._own_data_dir = data_dir is None
        args = list(args)
        if isolated_config and command is None:
            config_file = self.data_dir / "config.env"
            config_file.write_text("# empty: the test passes everything in the environment\n")
            args = ["--config", str(config_file), *args]
        command = command or [PYTHON, "-u", str(ROOT / "ib_data_agent.py"), *args]
        super().__init__(command, agent_env(key, relay_url, ib_port, self.data_dir, env), cwd or ROOT)
        self.key = key

    @property
    def log_file(self) -> Path:
        return self.data_dir / "ib_data_agent.log"

    def log_text(self) -> str:
        """The rotating log file and its backups, oldest first."""
        files = sorted(self.data_dir.glob("ib_data_agent.log*"), reverse=True)
        return "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)

    def everything(self) -> str:
        """stdout, stderr and the log files: all the agent has written anywhere."""
        return self.output + self.log_text()

    def cleanup(self) -> None:
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class AgentStack:
    """FakeTWS + FakeRelay (in-process, or as processes with fakes_as_processes=True) + the agent process
    (or none with agent=False).

    On enter it waits until the relay has the agent's hello; on exit it stops the agent with SIGTERM
    (agent_exit_code keeps its exit code), then the fakes.
    """

    def __init__(
        self,
        key: str = DEFAULT_KEY,
        agent_key: Optional[str] = None,
        tws: bool = True,
        tws_options: Optional[dict] = None,
        tws_args: Sequence[str] = (),
        relay_options: Optional[dict] = None,
        agent_env: Optional[Dict[str, str]] = None,
        agent_args: Sequence[str] = (),
        ib_port: Optional[int] = None,
        fakes_as_processes: bool = False,
        wait_hello: float = 30.0,
        agent: bool = True,
    ):
        self.key = key
        self.agent_key = agent_key or key  # a different one: the relay refuses the agent (401)
        self._start_tws = tws
        self._tws_options = tws_options or {}
        self._tws_args = list(tws_args)
        self._relay_options = relay_options or {}
        self._agent_env = agent_env
        self._agent_args = list(agent_args)
        self._fakes_as_processes = fakes_as_processes
        self._wait_hello = wait_hello
        self._start_agent = agent  # False: only the fakes, for an agent started some other way
        self.ib_port = ib_port
        self.tws: Any = None
        self.relay: Any = None
        self.relay_process: Optional[ServerProcess] = None
        self.agent: Optional[AgentProcess] = None
        self.agent_exit_code: Optional[int] = None

    def __enter__(self) -> "AgentStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._start_tws:
            self.ib_port = self.start_tws(self.ib_port or 0)
        if self.ib_port is None:
            self.ib_port = free_port()  # nothing listens there: "TWS is not running"
        if self._fakes_as_processes:
            self.relay_process = ServerProcess("tests.fake_relay", ["--key", self.key])
            self.relay = RelayClient(self.relay_process.start(), self.key)
        else:
            from tests.fake_relay import FakeRelay

            self.relay = FakeRelay(key=self.key, **self._relay_options)
            self.relay.start()
        if not self._start_agent:
            return
        self.agent = AgentProcess(self.agent_key, self.relay.url, self.ib_port, self._agent_env, self._agent_args)
        self.agent.start()
        if self._wait_hello:
            try:
                self.relay.wait_hello(timeout=self._wait_hello)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; agent output:\n{self.agent.output[-4000:]}") from None

    def wait_tws(self, connected: bool = True, timeout: float = 30.0) -> dict:
        """Ask the agent (status action) until its TWS connection is up (or down); returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.relay.request("status", timeout_s=10).get("data") or {}
            if data.get("connected") == connected:
                return data
            if time.monotonic() > deadline:
                raise TimeoutError(f"TWS connected={data.get('connected')} after {timeout:g} s: {data}")
            time.sleep(0.2)

    def start_tws(self, port: int = 0) -> int:
        """Start the fake TWS (again) on port (0 = any free one); returns its port."""
        if self._fakes_as_processes:
            self.tws = ServerProcess("tests.fake_tws", self._tws_args, port)
            return self.tws.start()
        from tests.fake_tws import FakeTWS

        self.tws = FakeTWS(port=port, **self._tws_options)
        return self.tws.start()

    def stop(self) -> None:
        if self.agent is not None:
            self.agent_exit_code = self.agent.stop()
            self.agent.cleanup()
        if self.relay_process is not None:
            self.relay_process.stop()
        elif self.relay is not None:
            self.relay.stop()
        if self.tws is not None:
            self.tws.stop()


class E2ECase(unittest.TestCase):
    """One agent process for the whole class; its output must never contain the key."""

    stack_options: dict = {}
    wait_for_tws = False  # True: tests start once the agent is connected to the fake TWS
    stack: AgentStack

    @classmethod
    def setUpClass(cls):
        cls.stack = AgentStack(**cls.stack_options)
        cls.stack.start()
        if cls.wait_for_tws:
            cls.stack.wait_tws()

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def tearDown(self):
        self.assertNotIn(DEFAULT_KEY, self.stack.agent.everything())
        if hasattr(self.stack.relay, "violations"):
            self.assertEqual(self.stack.relay.violations, [])

    @property
    def relay(self):
        return self.stack.relay

    @property
    def http(self) -> RelayClient:
        return RelayClient(self.stack.relay.port, self.stack.key)
