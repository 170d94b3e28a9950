"""`--check` (agent.doctor) against tests.fake_tws and tests.fake_relay, in each configuration a
trader can get wrong: the checklist lines, the fixes they point to, and the exit code."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from agent import doctor as agent_doctor
from agent.doctor import ACCOUNT, API, CONFIG, MARKET_DATA, PYTHON_CHECK, READ_ONLY, RELAY, TWS
from tests.agent_process import PYTHON, ROOT, agent_env, free_port
from tests.fake_relay import FakeRelay, self_signed_relay
from tests.fake_tws import FakeTWS

KEY = "doctor-KEY-5e7a91c3d2"
LINE = re.compile(r"^(OK|WARN|FAIL|SKIP)\s+([^:]+): (.*)$", re.MULTILINE)
ALL_CHECKS = (PYTHON_CHECK, CONFIG, TWS, API, ACCOUNT, READ_ONLY, MARKET_DATA, RELAY)
IB_CHECKS = (API, ACCOUNT, READ_ONLY, MARKET_DATA)
WAIT_S = 10.0


class DoctorCase(unittest.TestCase):
    """One fake relay for the class; a fake TWS per test, with the options of the case."""

    @classmethod
    def setUpClass(cls):
        cls.relay = FakeRelay(port=0, key=KEY)
        cls.relay.start()
        cls.folder = Path(tempfile.mkdtemp(prefix="doctor-"))
        cls.config_file = cls.folder / "config.env"
        cls.config_file.write_text("# empty: each test passes its variables as the environment\n")

    @classmethod
    def tearDownClass(cls):
        cls.relay.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    def start_tws(self, **options) -> int:
        tws = FakeTWS(port=0, **options)
        self.addCleanup(tws.stop)
        self.tws = tws
        return tws.start()

    def check(self, tws_port=None, env=None, candidates=None):
        """Runs the checklist; returns (exit code, {title: status}, output). Paper candidates: a port
        nobody listens on, then the fake TWS (so the agent's search order is exercised too)."""
        environ = {"IB_PROVIDER_KEY": KEY, "RELAY_URL": self.relay.url}
        environ.update(env or {})
        if candidates is None:
            ports = (free_port(),) + ((tws_port,) if tws_port else ())
            candidates = {"paper": ports, "live": ports}
        out = io.StringIO()
        code = agent_doctor.run(self.config_file, agent_version="test", candidates=candidates, environ=environ, out=out)
        text = out.getvalue()
        for secret in {KEY, environ["IB_PROVIDER_KEY"]}:
            self.assertNotIn(secret, text)
        lines = LINE.findall(text)
        self.assertEqual(tuple(title for _, title, _ in lines), ALL_CHECKS, text)  # one line each, in order
        statuses = {title: status for status, title, _ in lines}
        return code, statuses, text

    def wait_until(self, predicate, what):
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def assertOnly(self, statuses, expected, text):
        """Every check OK except the ones given."""
        wanted = {title: expected.get(title, "OK") for title in ALL_CHECKS}
        self.assertEqual(statuses, wanted, text)


class HealthySetUp(DoctorCase):
    def test_all_ok_exit_0_and_nothing_left_connected(self):
        port = self.start_tws()
        code, statuses, text = self.check(port)
        self.assertEqual(code, 0, text)
        self.assertOnly(statuses, {}, text)
        self.assertIn(f"port {port}: DU1234567, paper account", text)
        self.assertRegex(text, r"Market data: SPY bid [\d.]+ / ask [\d.]+, live data; SPY \d{8} [\d.]+ call bid")
        self.assertIn("All checks passed.", text)
        self.wait_until(lambda: not self.tws.ready_sessions(), "the check's TWS clients to disconnect")
        self.wait_until(lambda: not self.relay.connected, "the check to hang up on the relay")
        self.assertIsNone(self.relay.hello)  # it only tried the key: no hello, nothing served

    def test_ib_port_alone_reports_the_account_type(self):
        port = self.start_tws(accounts=("U7654321",))
        code, statuses, text = self.check(env={"IB_PORT": str(port)}, candidates={})
        self.assertEqual(code, 0, text)
        self.assertOnly(statuses, {}, text)
        self.assertIn(f"IB_PORT={port}: live account U7654321", text)

    def test_live_mode_takes_the_live_port_and_passes_over_the_paper_one(self):
        paper = self.start_tws()
        live = self.start_tws(accounts=("U7654321",))
        code, statuses, text = self.check(env={"IB_MODE": "live"}, candidates={"live": (paper, live)})
        self.assertEqual(code, 0, text)
        self.assertOnly(statuses, {}, text)
        self.assertIn(f"the agent will use port {live}: live account U7654321", text)
        self.assertIn(f"port {paper}: TWS logged into PAPER account DU1234567, but IB_MODE=live", text)


class TwsProblems(DoctorCase):
    def test_tws_not_running(self):
        code, statuses, text = self.check()
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, dict({TWS: "FAIL"}, **dict.fromkeys(IB_CHECKS, "SKIP")), text)
        self.assertIn("Enable ActiveX and Socket Clients", text)
        self.assertIn("TWS uses 7497 for paper and 7496 for live; IB Gateway 4002 / 4001", text)

    def test_listening_but_the_api_handshake_never_answers(self):
        """A port that accepts TCP and says nothing (a dialog waiting in TWS, another program)."""
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            code, statuses, text = self.check(port)
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {API: "FAIL", ACCOUNT: "SKIP", READ_ONLY: "SKIP", MARKET_DATA: "SKIP"}, text)
        self.assertIn(f"port {port}: listening (see API connection)", text)
        self.assertIn(f"port {port}: TWS did not answer the API handshake", text)
        self.assertIn("Trusted IP", text)

    def test_live_account_with_ib_mode_paper(self):
        port = self.start_tws(accounts=("U1234567",))
        code, statuses, text = self.check(port)
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {ACCOUNT: "FAIL", READ_ONLY: "SKIP", MARKET_DATA: "SKIP"}, text)
        self.assertIn(f"port {port}: TWS logged into LIVE account U1234567, but IB_MODE=paper", text)
        self.assertIn("set IB_MODE=live in config.env", text)

    def test_read_only_api(self):
        port = self.start_tws(read_only=True)
        code, statuses, text = self.check(port)
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {READ_ONLY: "FAIL"}, text)
        self.assertIn("Uncheck Read-Only API", text)
        self.assertIn("Click Apply, and restart the agent", text)

    def test_busy_client_id_is_a_warning_when_a_spare_id_works(self):
        port = self.start_tws(busy_client_ids=(17,))
        code, statuses, text = self.check(port)
        self.assertEqual(code, 0, text)
        self.assertOnly(statuses, {API: "WARN"}, text)
        self.assertIn(f"accepted on port {port} as client id 18: client id 17 is in use", text)
        self.assertIn("warning", text.splitlines()[-1])

    def test_all_client_ids_busy(self):
        port = self.start_tws(busy_client_ids=range(30, 36))
        code, statuses, text = self.check(port, env={"IB_CLIENT_ID": "30"})
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {API: "FAIL", ACCOUNT: "SKIP", READ_ONLY: "SKIP", MARKET_DATA: "SKIP"}, text)
        self.assertIn("client ids 30 to 35 are all in use in TWS (error 326)", text)
        self.assertIn("set IB_CLIENT_ID in config.env to a free id", text)

    def test_no_live_data_is_a_warning_with_delayed_prices(self):
        port = self.start_tws(no_live_data=True)
        code, statuses, text = self.check(port)
        self.assertEqual(code, 0, text)
        self.assertOnly(statuses, {MARKET_DATA: "WARN"}, text)
        self.assertIn("delayed data", text)
        self.assertIn("OPRA", text)

    def test_no_live_data_fails_when_only_live_data_is_allowed(self):
        port = self.start_tws(no_live_data=True)
        code, statuses, text = self.check(port, env={"MARKET_DATA_TYPE": "live"})
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {MARKET_DATA: "FAIL"}, text)
        self.assertIn("not subscribed", text)
        self.assertIn("set MARKET_DATA_TYPE=auto", text)


class RelayAndConfigProblems(DoctorCase):
    def test_wrong_key(self):
        port = self.start_tws()
        code, statuses, text = self.check(port, env={"IB_PROVIDER_KEY": "regenerated-KEY-0000"})
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {RELAY: "FAIL"}, text)
        self.assertIn("Authentication failed", text)
        self.assertIn("(HTTP 401)", text)
        self.assertIn("Download a fresh copy of the agent from the MA Tracker web app", text)

    def test_relay_not_reachable(self):
        port = self.start_tws()
        url = f"ws://127.0.0.1:{free_port()}/ws/agent"
        code, statuses, text = self.check(port, env={"RELAY_URL": url})
        self.assertEqual(code, 1, text)
        self.assertOnly(statuses, {RELAY: "FAIL"}, text)
        self.assertIn(f"WebSocket connection failed: {url}", text)
        self.assertIn("Check your internet connection", text)

    def test_bad_config_exits_2_and_skips_everything(self):
        code, statuses, text = self.check(env={"IB_PORT": "74g7"})
        self.assertEqual(code, 2, text)
        self.assertEqual(
            statuses, dict({PYTHON_CHECK: "OK", CONFIG: "FAIL"}, **dict.fromkeys(ALL_CHECKS[2:], "SKIP")), text
        )
        self.assertIn("IB_PORT='74g7' is not a whole number", text)

    def test_a_config_error_quoting_the_key_is_masked(self):
        code, statuses, text = self.check(env={"IB_MODE": KEY})  # check() asserts KEY is not in the output
        self.assertEqual(code, 2, text)
        self.assertIn("IB_MODE='****' is not one of", text)


class KeyAcrossTheCut(unittest.TestCase):
    """The relay check cuts the network's error text to 200 characters: the key is masked before
    the cut, so no cut leaves a fragment of it (issue 16)."""

    def test_an_error_text_with_the_key_at_each_cut_point(self):
        from unittest import mock

        from agent.config import Config

        config = Config(key=KEY, relay_url="ws://127.0.0.1:9/ws/agent")
        for before in range(200 - len(KEY), 201):
            out = io.StringIO()
            checklist = agent_doctor.Checklist(out, agent_doctor.Masker([KEY]))
            error = OSError("x" * before + KEY + "y" * 100)
            with mock.patch.object(agent_doctor.websocket, "create_connection", side_effect=error):
                agent_doctor.check_relay(config, checklist, "test")
            text = out.getvalue()
            self.assertIn("WebSocket connection failed", text)
            self.assertFalse(any(KEY[:n] in text or KEY[-n:] in text for n in range(4, len(KEY) + 1)), (before, text))


class PythonVersion(unittest.TestCase):
    def lines(self, version_info, executable="/usr/bin/python3"):
        out = io.StringIO()
        checklist = agent_doctor.Checklist(out, agent_doctor.Masker([]))
        agent_doctor.check_python(checklist, version_info, executable)
        return out.getvalue(), checklist.counts

    def test_3_10_and_newer_are_ok(self):
        self.assertEqual(agent_doctor.MIN_PYTHON, (3, 10))
        for version in ((3, 10, 0), (3, 13, 1)):
            text, counts = self.lines(version)
            self.assertEqual(dict(counts), {"OK": 1}, text)
            self.assertEqual(text, f"OK    Python: {'.'.join(map(str, version))} (/usr/bin/python3)\n")

    def test_3_9_fails_with_the_fix(self):
        text, counts = self.lines((3, 9, 18, "final", 0))
        self.assertEqual(dict(counts), {"FAIL": 1}, text)
        self.assertIn("FAIL  Python: 3.9.18 is too old: the agent needs Python 3.10 or newer (/usr/bin/python3)", text)
        self.assertIn("Fix: Install Python 3.10 or newer (README.md, Requirements), delete the .venv folder", text)

    def test_the_checklist_reports_the_running_python(self):
        text, _counts = self.lines(tuple(sys.version_info), sys.executable)
        self.assertTrue(text.startswith("OK    Python: "), text)


class CommandLine(DoctorCase):
    def run_cli(self, command, tws_port):
        env = agent_env(KEY, self.relay.url, tws_port, self.folder)
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertNotIn(KEY, result.stdout + result.stderr)
        return result

    def test_agent_doctor_py(self):
        port = self.start_tws()
        result = self.run_cli([PYTHON, "-m", "agent.doctor", "--config", str(self.config_file)], port)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("All checks passed.", result.stdout)
        self.assertEqual(result.stderr, "")

    def test_ib_data_agent_check(self):
        port = self.start_tws()
        result = self.run_cli(
            [PYTHON, str(ROOT / "ib_data_agent.py"), "--check", "--config", str(self.config_file)], port
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"port {port}: DU1234567, paper account", result.stdout)
        self.assertIn("All checks passed.", result.stdout)

    def test_ib_data_agent_check_with_a_bad_config_exits_2(self):
        self.config_file.with_name("bad.env").write_text("IB_MODE=papper\n")
        result = self.run_cli(
            [PYTHON, str(ROOT / "ib_data_agent.py"), "--check", "--config", str(self.config_file.with_name("bad.env"))],
            None,
        )
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertIn("FAIL  Config: IB_MODE='papper' is not one of: paper, live", result.stdout)

    def test_agent_doctor_py_failing(self):
        result = self.run_cli([PYTHON, "-m", "agent.doctor", "--config", str(self.config_file)], free_port())
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"FAIL\s+TWS / IB Gateway: nothing answers on 127\.0\.0\.1 port \d+")


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed to make a self-signed certificate")
class RelayTls(unittest.TestCase):
    """--check verifies the cloud's certificate with the agent's own TLS context (agent.relay.tls.tls_context):
    on a Python build without roots (python.org macOS before its certificate step) it uses certifi's,
    as the agent does, instead of failing where the agent would connect (issue 18)."""

    def setUp(self):
        self.relay, self.cert = self_signed_relay(self, KEY)

    def relay_line(self) -> str:
        from agent.config import Config

        out = io.StringIO()
        checklist = agent_doctor.Checklist(out, agent_doctor.Masker([KEY]))
        agent_doctor.check_relay(Config(key=KEY, relay_url=self.relay.url), checklist, "test")
        return out.getvalue()

    def test_certifi_roots_when_this_python_has_none(self):
        import os
        from unittest import mock

        no_roots = {"SSL_CERT_FILE": "/nonexistent/cert.pem", "SSL_CERT_DIR": "/nonexistent/certs"}
        # certifi's bundle stands in as the one that trusts the test certificate
        with mock.patch.dict(os.environ, no_roots), mock.patch("certifi.where", return_value=self.cert):
            text = self.relay_line()
        self.assertTrue(text.startswith("OK"), text)
        self.assertIn("API key accepted", text)

    def test_the_system_roots_when_there_are_some_and_a_certificate_they_refuse_fails(self):
        from unittest import mock

        with mock.patch("certifi.where", return_value=self.cert):  # not consulted: the system has roots
            text = self.relay_line()
        self.assertTrue(text.startswith("FAIL"), text)
        self.assertIn("WebSocket connection failed", text)


if __name__ == "__main__":
    unittest.main()
