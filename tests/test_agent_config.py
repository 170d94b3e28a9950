"""agent.config: every variable validated once, one line naming it, the key never in a message."""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

from agent import config as agent_config
from agent.config import PLACEHOLDER_KEY, VARIABLES, ConfigError, load_config
from tests.agent_process import PYTHON, ROOT, ManagedProcess, agent_env

KEY = "cfg-KEY-3b7e91"


class ConfigCase(unittest.TestCase):
    def setUp(self):
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.file = self.folder / "config.env"
        self.file.write_text("")

    def load(self, file_text: str = "", **env) -> agent_config.Config:
        self.file.write_text(file_text, encoding="utf-8")
        return load_config(self.file, environ=env)

    def assert_error(self, expected: str, file_text: str = "", **env) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.load(file_text, **env)
        message = str(caught.exception)
        self.assertIn(expected, message)
        self.assertEqual(len(message.splitlines()), 1)
        return message


class Values(ConfigCase):
    def test_defaults(self):
        config = self.load(IB_PROVIDER_KEY=KEY)
        self.assertEqual(
            (config.relay_url, config.ib_port, config.ib_mode, config.ib_mode_explicit),
            (agent_config.DEFAULT_RELAY_URL, None, "paper", False),
        )
        self.assertEqual(config.log_file, agent_config.AGENT_DIR / "ib_data_agent.log")
        self.assertNotIn(KEY, repr(config))

    def test_environment_overrides_the_file_and_empty_values_count_as_unset(self):
        config = self.load(
            "IB_PROVIDER_KEY=from-file\nIB_PORT=4002\nIB_MODE=live\nLOG_LEVEL=\n",
            IB_PROVIDER_KEY=KEY,
            IB_PORT="",
            IB_MODE="paper",
        )
        self.assertEqual((config.key, config.ib_port, config.ib_mode, config.log_level), (KEY, 4002, "paper", "INFO"))
        self.assertTrue(config.ib_mode_explicit)

    def test_file_values_are_taken_literally_and_a_bom_is_fine(self):
        self.file.write_bytes(b"\xef\xbb\xbfIB_PROVIDER_KEY=k$x${HOME}\nLOG_LEVEL=debug\n")
        config = load_config(self.file, environ={})
        self.assertEqual((config.key, config.log_level), ("k$x${HOME}", "DEBUG"))

    def test_loopback_ws_is_accepted(self):
        for url in (
            "ws://127.0.0.1:8080/ws/agent",
            "ws://localhost/ws/agent",
            "ws://[::1]:9/ws/agent",
            "wss://relay.example.com/ws/agent",
        ):
            self.assertEqual(self.load(IB_PROVIDER_KEY=KEY, RELAY_URL=url).relay_url, url)

    def test_warm_lines_default_leaves_a_third_of_the_lines_to_cold_requests(self):
        self.assertEqual(self.load(IB_PROVIDER_KEY=KEY).warm_lines, 60)
        self.assertEqual(self.load(IB_PROVIDER_KEY=KEY, IB_MAX_MKT_LINES="45").warm_lines, 30)
        self.assertEqual(self.load(IB_PROVIDER_KEY=KEY, IB_MAX_MKT_LINES="1").warm_lines, 0)
        self.assertEqual(self.load(IB_PROVIDER_KEY=KEY, IB_MAX_MKT_LINES="45", WARM_LINES="44").warm_lines, 44)

    def test_relative_data_dir_is_relative_to_the_agent_folder(self):
        self.assertEqual(
            self.load(IB_PROVIDER_KEY=KEY, AGENT_DATA_DIR="tests").data_dir, agent_config.AGENT_DIR / "tests"
        )
        self.assertEqual(self.load(IB_PROVIDER_KEY=KEY, AGENT_DATA_DIR=str(self.folder)).data_dir, self.folder)


class Errors(ConfigCase):
    def test_each_bad_value_names_its_variable(self):
        self.assert_error("IB_PROVIDER_KEY is not configured")
        self.assert_error("IB_PROVIDER_KEY is not configured", IB_PROVIDER_KEY=PLACEHOLDER_KEY)
        cases = [
            ({"IB_PORT": "seven"}, "IB_PORT='seven' is not a whole number"),
            ({"IB_PORT": "70000"}, "IB_PORT=70000 is out of range (1 to 65535)"),
            ({"IB_MODE": "demo"}, "IB_MODE='demo' is not one of: paper, live"),
            ({"RELAY_URL": "ws://relay.example.com/ws/agent"}, "RELAY_URL uses unencrypted ws:// to relay.example.com"),
            ({"RELAY_URL": "https://relay.example.com/ws/agent"}, "is not a wss:// URL"),
            ({"RELAY_URL": "wss://user:pw@relay.example.com/ws"}, "RELAY_URL must not contain a user name"),
            ({"RELAY_URL": "wss://relay.example.com:99999/ws"}, "has an invalid port"),
            ({"IB_HOST": "tws host"}, "IB_HOST='tws host' is not a host name"),
            ({"IB_MAX_MSG_RATE": "nan"}, "IB_MAX_MSG_RATE=nan is out of range (1 to 50)"),
            ({"AGENT_DATA_DIR": "/no/such/folder"}, "AGENT_DATA_DIR='/no/such/folder' is not an existing folder"),
            ({"WARM_LINES": "90"}, "WARM_LINES=90 must be smaller than IB_MAX_MKT_LINES=90"),
            ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is not one of: DEBUG, INFO, WARNING, ERROR"),
        ]
        for env, expected in cases:
            with self.subTest(env=env):
                self.assert_error(expected, IB_PROVIDER_KEY=KEY, **env)

    def test_a_key_with_spaces_is_refused_without_showing_it(self):
        message = self.assert_error("IB_PROVIDER_KEY contains spaces", IB_PROVIDER_KEY="my secret key")
        self.assertNotIn("secret", message)

    def test_missing_config_file(self):
        with self.assertRaises(ConfigError) as caught:
            load_config(self.folder / "nope.env", environ={"IB_PROVIDER_KEY": KEY})
        self.assertIn("file not found", str(caught.exception))


class FailsClosed(ConfigCase):
    """A config.env typo must never be ignored: it could silently loosen the order policy (issue 16)."""

    def test_each_typo_is_an_error_naming_it(self):
        cases = [
            (
                "MAX_NOTIONAL=1000\n",
                "MAX_NOTIONAL: unknown setting; did you mean MAX_ORDER_NOTIONAL? (config.env line 2)",
            ),
            (
                "max_order_notional=1000\n",
                "max_order_notional: unknown setting; did you mean MAX_ORDER_NOTIONAL? (names are case-sensitive)",
            ),
            ("ALLOW_ORDER=off\n", "ALLOW_ORDER: unknown setting; did you mean ALLOW_ORDERS?"),
            ("FROBNICATE=1\n", "FROBNICATE: unknown setting (config.env lists every setting"),
            (
                'MAX_ORDER_NOTIONAL="1000\nMAX_ORDER_QUANTITY=1\n',
                "MAX_ORDER_NOTIONAL (config.env line 2): cannot be read",
            ),
            ("MAX_ORDER_NOTIONAL='1000\n", "MAX_ORDER_NOTIONAL (config.env line 2): cannot be read"),
            ('MAX_ORDER_NOTIONAL="1000"0\n', "MAX_ORDER_NOTIONAL (config.env line 2): cannot be read"),
            ("MAX_ORDER_NOTIONAL\n", "MAX_ORDER_NOTIONAL (config.env line 2): has no '='"),
            (
                "MAX_ORDER_NOTIONAL=1000\nMAX_ORDER_NOTIONAL=50000\n",
                "MAX_ORDER_NOTIONAL is set twice in config.env (lines 2 and 3)",
            ),
        ]
        for text, expected in cases:
            with self.subTest(text=text):
                message = self.assert_error(expected, f"IB_PROVIDER_KEY={KEY}\n" + text)
                self.assertNotIn(KEY, message)
                self.assertNotIn("1000", message)  # values are never echoed: one of them may be the key

    def test_a_key_in_an_unreadable_line_is_not_shown(self):
        message = self.assert_error("IB_PROVIDER_KEY (config.env line 1): cannot be read", f'IB_PROVIDER_KEY="{KEY}\n')
        self.assertNotIn(KEY, message)

    def test_what_still_reads(self):
        config = self.load(
            f"# comment\n\nexport IB_PROVIDER_KEY={KEY}\nMAX_ORDER_NOTIONAL = 1000 # mine\n"
            "MAX_ORDER_QUANTITY='3'\nLOG_LEVEL=\n#MAX_NOTIONAL=5\n"
        )
        self.assertEqual(
            (config.key, config.max_order_notional, config.max_order_quantity, config.log_level),
            (KEY, 1000.0, 3, "INFO"),
        )

    def test_the_environment_is_read_only_for_known_names(self):
        config = self.load(IB_PROVIDER_KEY=KEY, MAX_NOTIONAL="1", max_order_quantity="1", ALLOW_ORDERS="off")
        self.assertEqual(
            (config.max_order_notional, config.max_order_quantity, config.allow_orders), (25000.0, 10, "off")
        )


class ShippedConfigFile(unittest.TestCase):
    def test_config_env_documents_every_variable_and_ships_the_placeholder(self):
        text = (ROOT / "config.env").read_text(encoding="utf-8")
        for name in VARIABLES:
            self.assertRegex(text, rf"(?m)^#?{name}=", name)
        with self.assertRaises(ConfigError) as caught:
            load_config(ROOT / "config.env", environ={})
        self.assertIn("IB_PROVIDER_KEY is not configured", str(caught.exception))


class BadConfigProcess(unittest.TestCase):
    def run_agent(self, env: dict, args=(), config_text: str = "") -> ManagedProcess:
        """The agent with a bad setting: it must stop before connecting to anything."""
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "config.env").write_text(config_text)
        command = [PYTHON, str(ROOT / "ib_data_agent.py"), "--config", str(folder / "config.env"), *args]
        process = ManagedProcess(
            command, env=agent_env(KEY, "ws://127.0.0.1:9/ws/agent", None, folder, env), cwd=folder
        ).start()
        self.assertEqual(process.wait(30), 2)
        return process

    def test_one_line_on_stderr_exit_2_no_traceback_and_no_key(self):
        process = self.run_agent({"IB_PORT": "74 97"})
        self.assertEqual(process.stdout.text, "")
        self.assertEqual(process.stderr.text, "Configuration error: IB_PORT='74 97' is not a whole number\n")

    def test_a_value_that_contains_the_key_is_masked(self):
        process = self.run_agent({"IB_HOST": f"{KEY}/x"})
        self.assertIn("IB_HOST='****/x' is not a host name", process.stderr.text)
        self.assertNotIn(KEY, process.output)

    def test_a_typo_in_config_env_is_exit_2_naming_it(self):
        for text, expected in (
            ("MAX_NOTIONAL=1000", "MAX_NOTIONAL: unknown setting; did you mean MAX_ORDER_NOTIONAL?"),
            ('MAX_ORDER_NOTIONAL="1000', "MAX_ORDER_NOTIONAL (config.env line 1): cannot be read"),
        ):
            with self.subTest(text=text):
                process = self.run_agent({}, config_text=text + "\n")
                self.assertEqual(process.stdout.text, "")
                self.assertTrue(process.stderr.text.startswith(f"Configuration error: {expected}"), process.stderr.text)
                self.assertEqual(len(process.stderr.text.splitlines()), 1)

    def test_check_with_a_bad_setting_names_it_and_exits_2(self):
        process = self.run_agent({"IB_MODE": "papper"}, ["--check"])
        self.assertIn("FAIL", process.stdout.text)
        self.assertIn("IB_MODE='papper' is not one of: paper, live", process.stdout.text)
        self.assertNotIn(KEY, process.output)


if __name__ == "__main__":
    unittest.main()
