"""The agent as a user runs it (a separate process) against tests.fake_tws and tests.fake_relay,
driven through the relay's HTTP API and its Python API."""

from __future__ import annotations

import datetime
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

from tests.agent_process import (
    DEFAULT_KEY,
    PYTHON,
    ROOT,
    AgentProcess,
    AgentStack,
    E2ECase,
    ManagedProcess,
    RelayClient,
    agent_env,
    free_port,
)

# A few seconds of work even when an earlier run left WARM_LINES (60) of its contracts subscribed:
# with 4 strikes around (~78 contracts) a second run took under a second and sent one progress frame.
LONG_CHAIN = {"ticker": "AAPL", "max_days": 60, "strikes_around": 8}
VERY_LONG_CHAIN = {"ticker": "SPY", "max_days": 10}  # well over ten seconds


class ServedActions(E2ECase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.stack.wait_tws()

    def ok(self, action, params=None, **kwargs) -> dict:
        response = self.http.request(action, params, **kwargs)
        self.assertTrue(response["ok"], response)
        return response["data"]

    def test_hello_and_status(self):
        hello = self.relay.hello
        self.assertEqual(hello["agent_version"], "1.0.0")
        self.assertIn("fetch-chain", hello["actions"])
        data = self.ok("status")
        self.assertEqual((data["connected"], data["accounts"], data["account_type"]), (True, ["DU1234567"], "paper"))
        self.assertEqual(data["port"], self.stack.ib_port)
        for counter in ("uptime_s", "requests_served", "in_flight"):
            self.assertIsInstance(data[counter], (int, float))

    def test_expirations_quote_and_chain_agree(self):
        listed = self.ok("expirations", {"ticker": "aapl"})
        self.assertEqual(listed["ticker"], "AAPL")
        self.assertTrue(listed["expirations"] and all(len(e) == 8 for e in listed["expirations"]))
        self.assertEqual(listed["expirations"], sorted(listed["expirations"]))
        quotes = self.ok("quote", {"tickers": ["AAPL", "MSFT"]})["quotes"]
        self.assertEqual(set(quotes), {"AAPL", "MSFT"})
        self.assertLessEqual(quotes["AAPL"]["bid"], quotes["AAPL"]["ask"])
        chain = self.ok("fetch-chain", {"ticker": "AAPL", "max_days": 30, "strikes_around": 2, "rights": ["C"]})
        self.assertTrue(set(chain["expirations"]) <= set(listed["expirations"]))
        self.assertTrue(chain["options"])
        for option in chain["options"]:
            self.assertEqual(option["right"], "C")
            self.assertIn(option["expiration"], chain["expirations"])
            self.assertIn(option["strike"], listed["strikes"])

    def test_fetch_prices_answers_in_request_order_and_a_missing_contract_does_not_fail_the_batch(self):
        chain = self.ok("fetch-chain", {"ticker": "MSFT", "max_days": 20, "strikes_around": 1})["options"]
        listed = [{k: o[k] for k in ("ticker", "expiration", "strike", "right")} for o in chain]
        contracts = [listed[-1], {"ticker": "MSFT", "expiration": "20991231", "strike": 1.5, "right": "C"}, listed[0]]
        data = self.ok("fetch-prices", {"contracts": contracts})
        self.assertEqual(
            [(o["strike"], o["right"]) for o in data["options"]], [(c["strike"], c["right"]) for c in contracts]
        )
        self.assertEqual([o["error"] is None for o in data["options"]], [True, False, True])
        self.assertEqual(data["options"][1]["error"]["code"], "NO_SECURITY_DEFINITION")
        self.assertIn("MSFT", data["underlyings"])

    def test_sell_scan_is_sorted_best_first(self):
        data = self.ok("sell-scan", {"ticker": "MSFT", "right": "P", "max_days": 30, "otm_max_pct": 10})
        yields = [c["annualized_pct"] for c in data["candidates"]]
        self.assertTrue(yields)
        self.assertEqual(yields, sorted(yields, reverse=True))
        today = datetime.date.today()
        for candidate in data["candidates"]:
            expiry = datetime.datetime.strptime(candidate["expiration"], "%Y%m%d").date()
            self.assertLessEqual((expiry - today).days, 30)
            self.assertLess(candidate["strike"], data["underlying"]["ask"])  # out of the money puts

    def test_account_actions(self):
        self.assertIsInstance(self.ok("positions")["positions"], list)
        self.assertIn("DU1234567", self.ok("account-summary")["accounts"])
        self.assertIsInstance(self.ok("open-orders")["orders"], list)

    def test_long_work_sends_progress(self):
        response = self.relay.request("fetch-chain", LONG_CHAIN, timeout_s=60)
        self.assertTrue(response["ok"])
        progress = self.http.progress(response["id"])
        self.assertGreaterEqual(len(progress), 2)
        self.assertTrue(all(0 <= p["done"] <= p["total"] for p in progress))
        self.assertEqual([p["done"] for p in progress], sorted(p["done"] for p in progress))

    def test_cancel(self):
        future = self.relay.submit("fetch-chain", VERY_LONG_CHAIN, id="to-cancel", timeout_s=60)
        self.relay.wait_until(lambda: self.relay.progress.get("to-cancel"), timeout=30, what="progress")
        self.http.cancel("to-cancel")
        response = future.result(30)
        self.assertEqual(response["error"]["code"], "CANCELLED")
        self.assertTrue(self.ok("quote", {"tickers": ["SPY"]})["quotes"]["SPY"]["bid"])

    def test_unknown_action_bad_params_and_a_non_json_frame(self):
        response = self.http.request("launch-rocket")
        self.assertEqual(response["error"]["code"], "UNKNOWN_ACTION")
        response = self.http.request("quote", {"tickers": ["AAPL", "MSFT", "SPY", "BAD TICKER!"]})
        self.assertEqual(
            response["error"],
            {"code": "INVALID_REQUEST", "ib_code": None, "message": "params.tickers[3]: must be a ticker symbol"},
        )
        connections = self.relay.connections
        self.http.send_raw("this is {not json")
        self.stack.agent.wait_for_output("Ignored a frame from the cloud \\(not a JSON object\\): this is")
        self.assertTrue(self.ok("status")["connected"])
        self.assertEqual(self.relay.connections, connections)

    def test_duplicate_request_id_is_executed_once(self):
        first = self.relay.submit("fetch-chain", LONG_CHAIN, id="twice", timeout_s=60)
        self.relay.wait_until(lambda: self.relay.progress.get("twice"), timeout=30, what="progress")
        second = self.relay.submit("fetch-chain", LONG_CHAIN, id="twice", timeout_s=60)
        self.assertTrue(first.result(60)["ok"])
        self.assertEqual(second.result(60), first.result(0))
        self.ok("status")  # a later round trip: any second response to "twice" would be in by now
        self.assertEqual(self.relay.response_counts["twice"], 1)
        self.assertIn("request twice arrived again while running", self.stack.agent.output)

    def test_a_request_survives_a_relay_drop(self):
        future = self.relay.submit("fetch-chain", LONG_CHAIN, id="across-drop", timeout_s=60)
        self.relay.wait_until(lambda: self.relay.progress.get("across-drop"), timeout=30, what="progress")
        connections = self.relay.connections
        self.assertTrue(self.http.drop())
        response = future.result(60)
        self.assertTrue(response["ok"], response)
        self.assertEqual(self.relay.connections, connections + 1)
        self.stack.agent.wait_for_output("Relay connection lost")


class TwsNotRunning(E2ECase):
    stack_options = {"tws": False}

    def test_answers_ib_not_connected_at_once_then_serves_when_tws_comes_up(self):
        status = self.relay.request("status", timeout_s=10)["data"]
        self.assertFalse(status["connected"])
        response = self.relay.request("quote", {"tickers": ["AAPL"]}, timeout_s=5)
        self.assertEqual(response["error"]["code"], "IB_NOT_CONNECTED")
        self.stack.start_tws(self.stack.ib_port)
        self.stack.wait_tws(timeout=60)
        self.assertTrue(self.relay.request("quote", {"tickers": ["AAPL"]})["ok"])
        self.assertTrue(
            self.relay.wait_until(
                lambda: self.relay.last_status and self.relay.last_status["ib"]["connected"], what="status frame"
            )
        )


class WrongKey(E2ECase):
    stack_options = {"agent_key": DEFAULT_KEY, "key": "the-key-the-cloud-expects", "wait_hello": 0}

    def test_refused_agent_says_why_keeps_running_and_retries_slowly(self):
        agent = self.stack.agent
        agent.wait_for_output("Authentication failed")
        text = agent.output
        self.assertIn(
            "Your API key may have been regenerated. Download a fresh copy of the agent from the MA Tracker web app.",
            text,
        )
        self.assertIn("Retrying in 5 minutes", text)
        time.sleep(2)  # a tight loop would have knocked many times by now
        self.assertEqual(self.relay.auth_failures, 1)
        self.assertEqual(self.relay.connections, 0)
        self.assertIsNone(agent.process.poll())
        self.assertEqual(agent.stop(), 0)


class FakesAsProcesses(unittest.TestCase):
    def test_the_harness_runs_the_fakes_from_their_command_lines(self):
        with AgentStack(fakes_as_processes=True) as stack:
            self.assertIsInstance(stack.relay, RelayClient)
            self.assertEqual(stack.wait_tws()["accounts"], ["DU1234567"])
            self.assertTrue(stack.relay.request("quote", {"tickers": ["SPY"]})["ok"])
            self.assertEqual(stack.relay.status()["connections"], 1)
        self.assertEqual(stack.agent_exit_code, 0)
        self.assertEqual(stack.relay_process.process.returncode, 0)


class Signals(unittest.TestCase):
    def test_sigterm_during_a_request_cancels_it_and_exits_0(self):
        with AgentStack() as stack:
            stack.wait_tws()
            future = stack.relay.submit("fetch-chain", VERY_LONG_CHAIN, id="in-flight", timeout_s=60)
            stack.relay.wait_until(lambda: stack.relay.progress.get("in-flight"), timeout=30, what="progress")
            stack.agent.send_signal(signal.SIGTERM)
            self.assertEqual(future.result(30)["error"]["code"], "CANCELLED")
            self.assertEqual(stack.agent.wait(30), 0)
            self.assertIn("IB Data Agent stopped", stack.agent.output)

    def test_a_second_ctrl_c_quits_at_once(self):
        """The shutdown is made to hang, so only the second Ctrl-C can end the process."""
        command = [
            PYTHON,
            "-c",
            textwrap.dedent("""
            import sys
            import time
            import ib_data_agent
            ib_data_agent.Agent._shutdown = lambda self: time.sleep(600)
            sys.exit(ib_data_agent.main(sys.argv[1:]))
        """),
        ]
        agent = AgentProcess(DEFAULT_KEY, f"ws://127.0.0.1:{free_port()}/ws/agent", free_port(), command=command)
        self.addCleanup(agent.cleanup)
        self.addCleanup(agent.stop, 5)
        agent.command += ["--config", str(agent.data_dir / "empty.env")]
        (agent.data_dir / "empty.env").write_text("")
        agent.start()
        agent.wait_for_output("Connecting to TWS")
        agent.send_signal(signal.SIGINT)
        agent.wait_for_output("Stopping \\(press Ctrl-C again to quit at once\\)")
        agent.send_signal(signal.SIGINT)
        self.assertEqual(agent.wait(10), 130)


def project_files() -> list:
    """What a release holds: tracked files plus new, not ignored ones (the tree as it is being built)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    return [p for p in listed if not p.startswith((".venv", ".git/")) and (ROOT / p).is_file()]


@unittest.skipUnless(shutil.which("git") and (ROOT / ".git").exists(), "needs the project's git checkout")
class StartScript(unittest.TestCase):
    def test_start_unix_sh_from_another_folder_in_a_fresh_copy(self):
        copy = Path(tempfile.mkdtemp(prefix="agent copy "))  # a space in the path, as on many Macs
        elsewhere = Path(tempfile.mkdtemp(prefix="elsewhere-"))
        self.addCleanup(shutil.rmtree, copy)
        self.addCleanup(shutil.rmtree, elsewhere)
        for name in project_files():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
        with AgentStack(agent=False) as stack:
            env = agent_env(DEFAULT_KEY, stack.relay.url, stack.ib_port, elsewhere)
            env.pop("VIRTUAL_ENV", None)
            script = ManagedProcess(["bash", str(copy / "start_unix.sh")], env=env, cwd=elsewhere).start()
            self.addCleanup(script.stop, 10)
            try:
                hello = stack.relay.wait_hello(timeout=240)
            except TimeoutError:
                self.fail("no hello from ./start_unix.sh; its output:\n" + script.output[-4000:])
            self.assertEqual(hello["agent_version"], "1.0.0")
            self.assertTrue((copy / ".venv" / "bin" / "python").exists())
            self.assertEqual(script.stop(30), 0)
            self.assertIn("IB Data Agent 1.0.0 starting", script.output)
            self.assertTrue((elsewhere / "ib_data_agent.log").exists())
            self.assertNotIn(DEFAULT_KEY, script.output + (elsewhere / "ib_data_agent.log").read_text())


if __name__ == "__main__":
    unittest.main()
