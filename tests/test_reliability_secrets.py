"""Reliability, secrets (issue 8.6): a recognisable key through a mixed session (requests that work
and fail, frames that carry the key, a crash in an action and in a thread, relay and TWS
reconnects, an order), a wrong-key 401, and a crash of the main thread: the key appears in no
stdout, stderr, log file, audit file or crash report, and in no frame the agent sends unless
the cloud sent it in that request first. ws:// to a non-loopback host is a config error (exit
2), and the cloud cannot turn TLS verification off: frames that try change nothing, and the
agent still refuses a certificate it does not trust after them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path
from typing import List

from agent.config import ConfigError, load_config
from tests.agent_process import PYTHON, ROOT, AgentProcess, AgentStack, agent_env, free_port
from tests.fake_relay import FakeRelay, make_certificate, tls_relay
from tools.soak import figures, option_contracts, order_params, wait_status

KEY = "SECRET-KEY-4c0ffee-UNIQUE"
FRAGMENT = "4c0ffee"  # any part of the key showing up is a leak too
WAIT_S = 60.0
# The agent plus two crash paths: an action that raises (and starts a thread that raises), with
# the key in both exceptions' messages; and, with --crash-main, a main thread that raises.
CRASHING_AGENT = """
import os
import sys
import threading
import ib_data_agent
from agent.relay import actions as relay_actions
key = os.environ["IB_PROVIDER_KEY"]

def thread_crash():
    raise RuntimeError("thread crash with " + key)

def crash(runner, job, params):
    threading.Thread(target=thread_crash, name="crasher").start()
    raise RuntimeError("action crash with " + key)

relay_actions.ACTIONS["crash"] = relay_actions.Action(crash, needs_ib=False)
if "--crash-main" in sys.argv:
    sys.argv.remove("--crash-main")
    def run(self):
        raise RuntimeError("main crash with " + key)
    ib_data_agent.Agent.run = run
sys.exit(ib_data_agent.main(sys.argv[1:]))
"""
WS_TO_PUBLIC_HOSTS = (
    "ws://relay.example.com/ws/agent",
    "ws://192.168.1.10:8080/ws/agent",
    "ws://127.0.0.1.nip.io/ws/agent",
    "ws://localhost.example.com/ws/agent",
    "ws://[2001:db8::1]/ws/agent",
    "ws://0.0.0.0/ws/agent",
)
TLS_OFF_FRAMES = (
    {"type": "config", "id": "tls-1", "sslopt": {"cert_reqs": 0}, "verify": False},
    {"type": "request", "id": "tls-2", "action": "config", "params": {"sslopt": {"cert_reqs": 0}}},
    {"type": "request", "id": "tls-3", "action": "status", "params": {"verify_tls": False}},
    {"type": "hello", "id": "tls-4", "sslopt": {"check_hostname": False}},
)


def crashing_agent(key: str, relay_url: str, ib_port: int, data_dir: Path, *args: str, env=None) -> AgentProcess:
    config = data_dir / "empty-config.env"
    config.write_text("")
    command = [PYTHON, "-u", "-c", CRASHING_AGENT, "--config", str(config), *args]
    return AgentProcess(key, relay_url, ib_port, env, command=command, data_dir=data_dir)


class SecretsCase(unittest.TestCase):
    def setUp(self):
        self.folder = Path(tempfile.mkdtemp(prefix="reliability-secrets-"))
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.places: List[str] = []

    def everything(self, agent: AgentProcess) -> str:
        """All the agent wrote: stdout, stderr and every file in its data folder."""
        texts = [agent.output]
        for path in sorted(agent.data_dir.rglob("*")):
            if path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
                self.places.append(path.name)
        return "\n".join(texts)

    def assert_no_key(self, text: str, where: str) -> None:
        for secret in (KEY, FRAGMENT):
            context = text[max(0, text.find(secret) - 300) :][:600]
            self.assertNotIn(secret, text, f"the key shows in {where}: ...{context}")


class MixedSession(SecretsCase):
    def test_the_key_appears_nowhere_the_agent_writes(self):
        with AgentStack(key=KEY, agent=False) as stack:
            relay = stack.relay
            agent = crashing_agent(KEY, relay.url, stack.ib_port, self.folder)
            agent.start()
            self.addCleanup(agent.stop)
            relay.wait_hello(WAIT_S)
            wait_status(relay, lambda s: s["connected"], WAIT_S, "TWS connected")
            echoed = self.mixed_session(stack)
            self.assertEqual(agent.stop(), 0)
            sent = [f for f in relay.frames if not (isinstance(f, dict) and f.get("id") in echoed)]
            self.assert_no_key(json.dumps(sent), "the frames the agent sent to the cloud")
        text = self.everything(agent)
        for what in (
            "action crash with ****",
            "thread crash with ****",
            "Traceback",
            "Relay connection lost",
            "Lost connection to TWS",
            "unknown action '****'",
        ):
            self.assertIn(what, text)
        self.assert_no_key(text, "the agent's output or files")
        figures(
            "secrets mixed session",
            frames_from_the_agent=len(relay.frames),
            echoed_requests=len(echoed),
            files=sorted(set(self.places)),
            masked=text.count("****"),
        )

    def mixed_session(self, stack: AgentStack) -> set:
        """Requests that work, fail, crash or carry the key; reconnects. Returns the ids of requests
        that carried the key (their answers may quote it back to the cloud that sent it)."""
        relay, tws = stack.relay, stack.tws
        ok = [
            ("status", {}),
            ("quote", {"tickers": ["AAPL"]}),
            ("positions", {}),
            ("fetch-prices", {"contracts": option_contracts(tws.market, 3)}),
            ("place-order", order_params(tws.market)),
            ("open-orders", {}),
        ]
        for action, params in ok:
            response = relay.request(action, params, timeout_s=WAIT_S)
            self.assertTrue(response["ok"], response)
        echoed = {"key-action", "key-param", "key-ticker", "key-in-order"}
        failing = [
            ("quote", {"tickers": ["NOT A TICKER!"]}, None),
            ("launch-rocket", {}, None),
            (KEY, {}, "key-action"),
            ("status", {KEY: 1}, "key-param"),
            ("quote", {"tickers": [KEY]}, "key-ticker"),
            ("place-order", dict(order_params(tws.market), account=KEY), "key-in-order"),
            ("crash", {}, None),
        ]
        for action, params, request_id in failing:
            response = relay.request(action, params, id=request_id, timeout_s=WAIT_S)
            self.assertFalse(response["ok"], response)
        for text in (
            f"not json {KEY}",
            json.dumps({"type": "request", "action": "status", "key": KEY}),
            json.dumps({"type": "ack", "id": KEY}),
        ):
            relay.send_raw(text)
        connections = relay.connections
        relay.drop()
        relay.wait_until(lambda: relay.connections > connections and relay.hello, WAIT_S, "relay reconnect")
        tws.drop_all()
        wait_status(relay, lambda s: not s["connected"], WAIT_S, "TWS lost")
        wait_status(relay, lambda s: s["connected"], WAIT_S, "TWS back")
        self.assertTrue(relay.request("quote", {"tickers": ["MSFT"]}, timeout_s=WAIT_S)["ok"])
        return echoed


class OtherPaths(SecretsCase):
    def test_a_wrong_key_401(self):
        relay = FakeRelay(key="the-key-the-cloud-expects")
        relay.start()
        self.addCleanup(relay.stop)
        agent = AgentProcess(KEY, relay.url, free_port(), data_dir=self.folder)
        agent.start()
        self.addCleanup(agent.stop)
        agent.wait_for_output("Authentication failed", WAIT_S)
        self.assertEqual(agent.stop(), 0)
        self.assertEqual(relay.auth_failures, 1)
        self.assert_no_key(self.everything(agent), "the output of a refused agent")

    def test_a_crash_of_the_main_thread(self):
        agent = crashing_agent(KEY, f"ws://127.0.0.1:{free_port()}/ws/agent", free_port(), self.folder, "--crash-main")
        agent.start()
        self.addCleanup(agent.stop)
        code = agent.wait(WAIT_S)
        text = self.everything(agent)
        self.assertNotEqual(code, 0)
        self.assertIn("main crash with ****", text)
        self.assert_no_key(text, "a crash report")

    def test_ws_to_a_host_that_is_not_loopback_is_a_config_error(self):
        config = self.folder / "config.env"
        config.write_text("")
        for url in WS_TO_PUBLIC_HOSTS:
            with self.subTest(url=url), self.assertRaises(ConfigError) as caught:
                load_config(config, {"IB_PROVIDER_KEY": KEY, "RELAY_URL": url})
            self.assertIn("RELAY_URL", str(caught.exception))
        run = subprocess.run(
            [PYTHON, str(ROOT / "ib_data_agent.py"), "--config", str(config)],
            cwd=ROOT,
            env=agent_env(KEY, WS_TO_PUBLIC_HOSTS[0], 9, self.folder),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(run.returncode, 2)
        self.assertIn("RELAY_URL uses unencrypted ws://", run.stderr)
        self.assert_no_key(run.stdout + run.stderr, "the config error")


@unittest.skipUnless(shutil.which("openssl"), "openssl makes the certificates")
class TlsStaysOn(SecretsCase):
    def test_frames_from_the_cloud_cannot_turn_verification_off(self):
        trusted = make_certificate(self.folder, "trusted")
        untrusted = make_certificate(self.folder, "untrusted")
        relay = tls_relay(*trusted, key=KEY)
        self.addCleanup(lambda: relay.stop())
        port = relay.port
        # The agent trusts the first certificate the way a user's system trusts a real CA. DEBUG:
        # after a lost connection, failed attempts are logged at debug level only.
        agent = AgentProcess(
            KEY,
            relay.url,
            free_port(),
            env={"SSL_CERT_FILE": str(trusted[0]), "LOG_LEVEL": "DEBUG"},
            data_dir=self.folder,
        )
        agent.start()
        self.addCleanup(agent.stop)
        relay.wait_hello(WAIT_S)
        answers = []
        for frame in TLS_OFF_FRAMES:
            relay.send(frame)
        for frame in TLS_OFF_FRAMES:
            answers.append(relay.wait_until(lambda: relay.responses.get(frame["id"]), WAIT_S, frame["id"]))
        self.assertEqual([a["ok"] for a in answers], [False, False, False, False])
        # Same port, a certificate the agent does not trust: after a drop it must refuse it.
        relay.drop()
        relay.stop()
        relay = tls_relay(*untrusted, key=KEY, port=port)
        agent.wait_for_output("certificate could not be verified", WAIT_S)
        self.assertEqual(relay.connections, 0)
        self.assertEqual(agent.stop(), 0)
        self.assert_no_key(self.everything(agent), "the TLS session")
        figures(
            "TLS stays on",
            answers=[a["error"]["code"] for a in answers],
            refused_untrusted_certificate=relay.connections == 0,
        )


class LoggingErrors(SecretsCase):
    def test_a_log_line_that_cannot_be_encoded_does_not_print_the_key(self):
        """A lone surrogate (JSON "\\ud800") in a request id used to make the log handlers fail to
        encode the line; logging's handleError then printed the record's raw arguments, unmasked."""
        with AgentStack(key=KEY) as stack:
            stack.relay.send_raw(
                json.dumps({"type": "request", "id": "x\ud800", "action": "status", "params": {KEY: 1}})
            )
            stack.relay.wait_until(lambda: stack.relay.responses.get("x\ud800"), WAIT_S, "the answer")
            wait_status(stack.relay, lambda s: True, WAIT_S)
            stack.agent.stop()
            text = stack.agent.everything()
        self.assertNotIn("--- Logging error ---", text)
        self.assert_no_key(text, "stderr")


if __name__ == "__main__":
    unittest.main()
