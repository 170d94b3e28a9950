"""`--demo` (agent.demo): the chain table, and the whole demo run as a newcomer runs it: a table on
the screen, exit 0, and none of the processes it started left running (also when it is stopped)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest
from pathlib import Path

import psutil

from agent import demo as agent_demo
from tests.agent_process import PYTHON, ROOT, OutputCapture

RUN_TIMEOUT_S = 120
ROW = re.compile(
    r"^\s+(?:-|\d+\.\d\d)\s+(?:-|\d+\.\d\d)\s+(?:-|[+-]\d\.\d{3})\s+(\d+\.\d)"
    r"\s+(?:-|\d+\.\d\d)\s+(?:-|\d+\.\d\d)\s+(?:-|[+-]\d\.\d{3})$",
    re.MULTILINE,
)


def option(strike, right, bid, ask, delta, expiration="20260619"):
    return {
        "ticker": "AAPL",
        "expiration": expiration,
        "strike": strike,
        "right": right,
        "bid": bid,
        "ask": ask,
        "delta": delta,
    }


class ChainTable(unittest.TestCase):
    DATA = {
        "ticker": "AAPL",
        "expirations": ["20260619"],
        "elapsed_ms": 1234,
        "underlying": {
            "ticker": "AAPL",
            "bid": 187.5,
            "ask": 187.7,
            "last": 187.6,
            "mid": 187.6,
            "close": 186.0,
            "market_data_type": "delayed",
        },
        "options": [
            option(190.0, "P", 3.5, 3.7, -0.61),
            option(185.0, "C", 4.1, 4.3, 0.66),
            option(190.0, "C", 1.2, 1.3, 0.38),
            option(185.0, "P", None, 1.1, -0.33),
            option(187.5, "C", 2.5, 2.7, 0.52),
        ],
    }

    def test_strikes_down_the_middle_calls_left_puts_right(self):
        text = agent_demo.chain_table(self.DATA, today=datetime.date(2026, 6, 12))
        lines = text.splitlines()
        self.assertEqual(lines[0], "AAPL underlying 187.60 (bid 187.50 / ask 187.70, delayed data), 5 options in 1.2 s")
        self.assertIn("Expiration 2026-06-19 (7 days)", lines)
        calls_header = next(line for line in lines if "CALLS" in line)
        self.assertLess(calls_header.index("CALLS"), calls_header.index("PUTS"))
        self.assertEqual(
            lines[lines.index(calls_header) + 1].split(), ["bid", "ask", "delta", "STRIKE", "bid", "ask", "delta"]
        )
        rows = [line.split() for line in lines if ROW.match(line)]
        self.assertEqual(
            rows,
            [
                ["4.10", "4.30", "+0.660", "185.0", "-", "1.10", "-0.330"],
                ["2.50", "2.70", "+0.520", "187.5", "-", "-", "-"],
                ["1.20", "1.30", "+0.380", "190.0", "3.50", "3.70", "-0.610"],
            ],
        )
        marker = lines.index(next(line for line in lines if "AAPL 187.60" in line and line.startswith("-")))
        self.assertIn("187.5", lines[marker - 1])  # the price line sits between 187.5 and 190
        self.assertIn("190.0", lines[marker + 1])


class DemoRun(unittest.TestCase):
    """The demo in its own session, so every process it started can be found afterwards."""

    DEMO = [PYTHON, "-u", "-m", "agent.demo"]

    def start(self, command=DEMO, env=None) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.addCleanup(self.kill_session, process.pid)
        return process

    @staticmethod
    def session_processes(session_id: int):
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                pass
        return found

    def kill_session(self, session_id: int):
        """Safety net: a failing test must not leave the fakes running either."""
        for proc in self.session_processes(session_id):
            proc.kill()

    def assertNothingLeft(self, session_id: int):
        left = [(p.pid, " ".join(p.cmdline())) for p in self.session_processes(session_id)]
        self.assertEqual(left, [])

    def test_demo_prints_the_chain_and_stops_everything(self):
        process = self.start()
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        self.assertEqual(process.returncode, 0, stdout + stderr)
        self.assertRegex(stdout, r"AAPL underlying \d+\.\d\d \(bid \d+\.\d\d / ask \d+\.\d\d, live data\)")
        self.assertRegex(stdout, r"Connected to TWS on port \d+ as DU1234567 \(paper\)")
        strikes = [float(s) for s in ROW.findall(stdout)]
        self.assertGreaterEqual(len(strikes), 8, stdout)
        self.assertEqual(strikes, sorted(strikes))
        self.assertRegex(stdout, r"\n-+ AAPL \d+\.\d\d -+\n")
        self.assertIn("Stopped the agent and the fakes.", stdout)
        self.assertEqual(stderr, "")
        self.assertNothingLeft(process.pid)

    def test_ib_data_agent_demo(self):
        process = self.start([PYTHON, "-u", str(ROOT / "ib_data_agent.py"), "--demo"])
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        self.assertEqual(process.returncode, 0, stdout + stderr)
        self.assertGreaterEqual(len(ROW.findall(stdout)), 8, stdout)
        self.assertNothingLeft(process.pid)

    def test_sigterm_while_starting_stops_what_was_started(self):
        process = self.start()
        output = OutputCapture(process.stdout, "demo")
        output.wait_for(r"ws://127\.0\.0\.1:\d+/ws/agent\n", RUN_TIMEOUT_S, process)  # both fakes are up
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(RUN_TIMEOUT_S), agent_demo.EXIT_INTERRUPTED)
        output.join(10)
        process.stderr.close()
        self.assertIn("Interrupted.", output.text)
        self.assertIn("Stopped the agent and the fakes.", output.text)
        self.assertNothingLeft(process.pid)

    def test_a_reader_that_goes_away_does_not_leave_the_fakes_running(self):
        """`... --demo | head -n 3`: the next write fails after the fake TWS was started."""
        process = self.start(["sh", "-c", f"'{PYTHON}' -u -m agent.demo | head -n 3"])
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        self.assertIn("Starting the fake TWS", stdout)
        self.assertIn("BrokenPipeError", stderr)
        self.assertNothingLeft(process.pid)

    def test_without_aiohttp_it_says_how_to_install_it_and_starts_nothing(self):
        stub = Path(tempfile.mkdtemp(prefix="no-aiohttp-"))
        self.addCleanup(shutil.rmtree, stub, True)
        (stub / "aiohttp.py").write_text("raise ImportError('No module named aiohttp')\n")
        env = dict(os.environ, PYTHONPATH=str(stub))
        process = self.start(env=env)
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        self.assertEqual(process.returncode, 1, stdout + stderr)
        self.assertIn("pip install aiohttp", stderr)
        self.assertNotIn("Starting", stdout)
        self.assertNothingLeft(process.pid)


if __name__ == "__main__":
    unittest.main()
