"""Reliability, bad config (issue 8.5): every variable of agent.config.VARIABLES with wrong values
gives one clear line naming the variable, exit code 2 and never a traceback.

The bulk runs in-process (agent.config.load_config, which is all ib_data_agent.main runs before
it prints that line and returns 2); a handful of cases run `python ib_data_agent.py` as a user
does, to show the line, the exit code and the silence on stdout.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path
from typing import Dict, Optional

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.config import VARIABLES, ConfigError, load_config
from tests.agent_process import PYTHON, ROOT, agent_env
from tools.soak import figures

KEY = "cfg-KEY-5ca1ab1e-UNIQUE"
MISSING_FOLDER = "/nonexistent/ib-data-agent-folder"
# Wrong values for every variable; test_every_variable_has_wrong_values keeps this table complete.
BAD_VALUES: Dict[str, tuple] = {
    "IB_PROVIDER_KEY": ("YOUR_API_KEY_HERE", "key with spaces", "k\x01ey", "ключ", "x" * 513),
    "RELAY_URL": (
        "http://relay.example.com/ws/agent",
        "ws://relay.example.com/ws/agent",
        "ws://10.0.0.5/ws",
        "wss://",
        "relay.example.com",
        "wss://user:pw@relay.example.com/ws",
        "wss://relay.example.com:99999/ws",
        "ftp://relay.example.com",
    ),
    "IB_HOST": ("local host", "http://127.0.0.1", "user@host", "host/path", "a?b", "#"),
    "IB_PORT": ("abc", "0", "65536", "-1", "7497.0", "1e3", "7 497"),
    "IB_MODE": ("demo", "paper trading", "1"),
    "IB_CLIENT_ID": ("-1", "abc", "2147483647", "1.5"),
    "IB_MAX_MSG_RATE": ("0", "51", "nan", "inf", "fast", "-5"),
    "IB_MAX_MKT_LINES": ("0", "10001", "x", "-3"),
    "MARKET_DATA_TYPE": ("realtime", "5", "delayed frozen"),
    "WARM_LINES": ("-1", "x", "1.5", "90"),  # 90: not below IB_MAX_MKT_LINES (90)
    "WARM_SECONDS": ("-1", "nan", "86401", "forever"),
    "OPTION_TIMEOUT_S": ("0", "121", "x", "inf"),
    "REQUEST_TIMEOUT_S": ("0.5", "601", "x"),
    "ALLOW_ORDERS": ("yes", "true", "1"),
    "MAX_ORDER_QUANTITY": ("-1", "1.5", "x", "1000001"),
    "MAX_ORDER_NOTIONAL": ("-5", "1e13", "nan", "x"),
    "AGENT_WORKERS": ("0", "65", "x"),
    "AGENT_QUEUE_SIZE": ("0", "100001", "x"),
    "LOG_LEVEL": ("verbose", "TRACE", "5"),
    "AGENT_DATA_DIR": (MISSING_FOLDER, "{a file}"),
}
# (variable, value) run as a process, plus a config file that is not UTF-8.
PROCESS_CASES = (
    ("IB_PORT", "abc"),
    ("RELAY_URL", "ws://relay.example.com/ws/agent"),
    ("IB_PROVIDER_KEY", "YOUR_API_KEY_HERE"),
    ("MAX_ORDER_NOTIONAL", "nan"),
    ("AGENT_DATA_DIR", MISSING_FOLDER),
    ("IB_HOST", f"{KEY}/x"),
    ("WARM_LINES", "90"),
)
FUZZ_EXAMPLES = 60  # per variable


class ConfigCase(unittest.TestCase):
    def setUp(self):
        self.folder = Path(tempfile.mkdtemp(prefix="reliability-config-"))
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.empty = self.folder / "config.env"
        self.empty.write_text("")
        self.a_file = self.folder / "not-a-folder.txt"
        self.a_file.write_text("x")

    def load(self, name: str, value: str, config: Optional[Path] = None):
        environ = {"IB_PROVIDER_KEY": KEY, name: value.replace("{a file}", str(self.a_file))}
        return load_config(config or self.empty, environ)

    def assert_one_clear_line(self, name: str, message: str) -> None:
        self.assertTrue(message.strip(), f"{name}: empty message")
        self.assertNotIn("\n", message, f"{name}: more than one line: {message!r}")
        self.assertNotIn("\r", message)
        self.assertIn(name, message, f"the message does not name {name}: {message!r}")
        self.assertNotIn("Traceback", message)
        if name != "IB_PROVIDER_KEY":
            self.assertNotIn(KEY, message)


class BadConfigInProcess(ConfigCase):
    def test_every_variable_has_wrong_values(self):
        self.assertEqual(set(BAD_VALUES), set(VARIABLES))

    def test_each_wrong_value_is_refused_with_one_line_naming_the_variable(self):
        refused = 0
        for name, values in BAD_VALUES.items():
            for value in values:
                with self.subTest(name=name, value=value[:40]):
                    with self.assertRaises(ConfigError) as caught:
                        self.load(name, value)
                    self.assert_one_clear_line(name, str(caught.exception))
                    refused += 1
        figures("bad config in-process", variables=len(BAD_VALUES), wrong_values_refused=refused)

    def test_the_same_values_in_the_config_file(self):
        for name, values in BAD_VALUES.items():
            if name == "IB_PROVIDER_KEY":
                continue
            value = values[0].replace("{a file}", str(self.a_file))
            config = self.folder / f"{name}.env"
            config.write_text(f'IB_PROVIDER_KEY={KEY}\n{name}="{value}"\n', encoding="utf-8")
            with self.subTest(name=name), self.assertRaises(ConfigError) as caught:
                load_config(config, {})
            self.assert_one_clear_line(name, str(caught.exception))

    def test_any_text_either_loads_or_gives_one_line(self):
        """Whatever the value, load_config answers with a Config or one ConfigError line: no other
        exception. (Valid values loading is fine; the line is what must never go wrong.)"""
        outcomes = {"loaded": 0, "refused": 0}

        @settings(
            max_examples=FUZZ_EXAMPLES * len(VARIABLES),
            database=None,
            deadline=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            st.sampled_from(sorted(VARIABLES)),
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60),
        )
        def any_value(name, value):
            try:
                self.load(name, value)
                outcomes["loaded"] += 1
            except ConfigError as exc:
                self.assert_one_clear_line(name, str(exc))
                outcomes["refused"] += 1

        any_value()
        figures("bad config fuzz", **outcomes)


class BadConfigAsProcess(ConfigCase):
    def run_agent(self, env: Dict[str, str], config: Path) -> subprocess.CompletedProcess:
        environment = agent_env(KEY, "ws://127.0.0.1:9/ws/agent", 9, self.folder, env)
        return subprocess.run(
            [PYTHON, str(ROOT / "ib_data_agent.py"), "--config", str(config)],
            env=environment,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def assert_config_error(self, name: str, run: subprocess.CompletedProcess) -> None:
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertEqual(run.stdout, "")
        lines = run.stderr.splitlines()
        self.assertEqual(len(lines), 1, run.stderr)
        self.assertTrue(lines[0].startswith("Configuration error: "), lines[0])
        self.assert_one_clear_line(name, lines[0])
        self.assertNotIn(KEY, run.stderr)

    def test_the_agent_prints_one_line_and_exits_2(self):
        not_utf8 = self.folder / "latin1.env"
        not_utf8.write_bytes(b"IB_PROVIDER_KEY=abc\nIB_HOST=caf\xe9\xff\xfe\n")
        cases = [(name, {name: value}, self.empty) for name, value in PROCESS_CASES]
        cases.append((not_utf8.name, {}, not_utf8))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda case: (case[0], self.run_agent(case[1], case[2])), cases))
        for name, run in runs:
            with self.subTest(name=name):
                self.assert_config_error(name, run)
        figures("bad config as a process", cases=len(runs), lines=[run.stderr.strip()[:90] for _, run in runs])

    def test_a_config_file_that_does_not_exist(self):
        run = self.run_agent({}, self.folder / "missing.env")
        self.assert_config_error("--config", run)


if __name__ == "__main__":
    unittest.main()
