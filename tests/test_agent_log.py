"""Console and log file output, and the one key-masking mechanism, including crash reports."""

from __future__ import annotations

import io
import logging
import logging.handlers
import shutil
import sys
import tempfile
import textwrap
import threading
import unittest
from pathlib import Path

from agent import log as agent_log
from tests.agent_process import PYTHON, ROOT, AgentProcess, ManagedProcess, free_port

KEY = "sk_live_Zq9+/RECOGNISABLE=="


class Masking(unittest.TestCase):
    def test_every_spelling_of_the_key_is_masked(self):
        mask = agent_log.Masker([KEY])
        for text in (KEY, "sk_live_Zq9%2B%2FRECOGNISABLE%3D%3D", repr(KEY)[1:-1]):
            self.assertEqual(mask(f"a {text} b"), "a **** b")
        self.assertEqual(agent_log.Masker([""])("nothing to hide"), "nothing to hide")

    def test_text_is_masked_before_it_is_cut(self):
        """Cut first, a message would keep the key's first characters, which no masking recognises."""
        mask = agent_log.Masker([KEY])
        text = "frame: " + KEY + " and more"
        for limit in range(len("frame: ") + 1, len(text)):
            with self.subTest(limit=limit):
                clipped = agent_log.clip(text, limit, mask, ellipsis="...")
                self.assertLessEqual(len(clipped), limit)
                self.assertNotIn(KEY[:3], clipped)
        self.assertEqual(agent_log.clip("short", 10, mask), "short")

    def test_clip_uses_the_running_agents_masker(self):
        setup = agent_log.setup([KEY], "INFO", None, console=io.StringIO())
        self.addCleanup(setup.close)
        self.assertEqual(agent_log.clip(f"x{KEY}", 4), "x***")


class Setup(unittest.TestCase):
    def setUp(self):
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.console = io.StringIO()
        self.hooks_before = (sys.excepthook, threading.excepthook)
        self.logging = agent_log.setup([KEY], "INFO", self.folder / "agent.log", console=self.console)
        self.addCleanup(self.logging.close)

    def file_text(self) -> str:
        for handler in self.logging.handlers:
            handler.flush()
        return (self.folder / "agent.log").read_text(encoding="utf-8")

    def test_key_in_message_arguments_traceback_and_library_lines_is_masked(self):
        log = logging.getLogger("ib_data_agent.test")
        log.info("Bearer %s", KEY)
        log.warning(f"header Authorization: Bearer {KEY}")
        try:
            raise RuntimeError(f"connect failed with key={KEY}")
        except RuntimeError:
            log.exception("boom")
        logging.getLogger("websocket").critical("handshake with %s", KEY)
        for text in (self.console.getvalue(), self.file_text()):
            self.assertNotIn(KEY, text)
            self.assertGreaterEqual(text.count("****"), 4)

    def test_console_is_short_and_the_file_has_the_details(self):
        log = logging.getLogger("ib_data_agent.test")
        log.warning("TWS is slow")
        try:
            {}["missing"]
        except KeyError:
            log.exception("request failed")
        console, file_text = self.console.getvalue(), self.file_text()
        self.assertRegex(console, r"^\d\d:\d\d:\d\d Warning: TWS is slow\n")
        self.assertIn("KeyError: 'missing'  (details in the log file)", console)
        self.assertNotIn("Traceback", console)
        self.assertIn("Traceback (most recent call last)", file_text)
        self.assertIn("WARNING ib_data_agent.test [MainThread] TWS is slow", file_text)

    def test_the_log_file_rotates(self):
        handler = next(h for h in self.logging.handlers if isinstance(h, logging.handlers.RotatingFileHandler))
        self.assertEqual((handler.maxBytes, handler.backupCount), (5 * 1024 * 1024, 3))

    def test_uncaught_exceptions_in_threads_are_logged_masked(self):
        thread = threading.Thread(target=lambda: 1 / 0 if KEY else None, name="doomed")
        thread.start()
        thread.join(5)
        self.assertIn("Unexpected error in thread doomed", self.file_text())
        self.assertIn("ZeroDivisionError", self.console.getvalue())

    def test_close_restores_the_hooks(self):
        # Compared with the hooks found at setup, not Python's defaults: on Python < 3.11 the
        # exceptiongroup backport (a hypothesis dependency) installs its own sys.excepthook.
        self.assertIsNot(sys.excepthook, self.hooks_before[0])
        self.logging.close()
        self.assertEqual((sys.excepthook, threading.excepthook), self.hooks_before)


class UnencodableText(unittest.TestCase):
    def test_a_console_that_cannot_show_a_character_gets_an_escape_not_an_error(self):
        raw = io.BytesIO()
        console = io.TextIOWrapper(raw, encoding="cp1252", errors="strict", write_through=True)
        installed = agent_log.setup(["SECRET-KEY-123456"], "INFO", None, console=console)
        self.addCleanup(installed.close)
        errors = io.StringIO()
        real_stderr, sys.stderr = sys.stderr, errors
        try:
            logging.getLogger("ib_data_agent.test").warning("request %s for %s", "x\ud800 \u2713", "SECRET-KEY-123456")
        finally:
            sys.stderr = real_stderr
        text = raw.getvalue().decode("cp1252")
        self.assertIn("request x\\ud800 \\u2713 for ****", text)
        self.assertEqual(errors.getvalue(), "")


class UnwritableLogFile(unittest.TestCase):
    def test_console_only_with_a_warning(self):
        console = io.StringIO()
        setup = agent_log.setup([KEY], "INFO", Path("/nonexistent-folder/agent.log"), console=console)
        self.addCleanup(setup.close)
        self.assertIsNone(setup.log_file)
        self.assertIn("Cannot write the log file /nonexistent-folder/agent.log", console.getvalue())


class Crashes(unittest.TestCase):
    """A real process: everything it writes anywhere (stdout, stderr, log file) is checked for the key."""

    def crash(self, body: str, exit_code: int) -> str:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        script = textwrap.dedent(f"""
            import sys
            import threading
            sys.path.insert(0, {str(ROOT)!r})
            from agent import log as agent_log
            KEY = {KEY!r}
            agent_log.setup([KEY], "INFO", __import__("pathlib").Path({str(folder)!r}) / "agent.log")
        """) + textwrap.dedent(body)
        process = ManagedProcess([PYTHON, "-c", script]).start()
        self.assertEqual(process.wait(30), exit_code)
        everything = process.output + (folder / "agent.log").read_text(encoding="utf-8")
        self.assertNotIn(KEY, everything)
        return everything

    def test_main_thread_crash(self):
        text = self.crash(
            """
            raise ValueError("bad key " + KEY)
        """,
            exit_code=1,
        )
        self.assertIn("Unexpected error: the agent hit a bug", text)
        self.assertIn("ValueError: bad key ****", text)

    def test_thread_crash(self):
        text = self.crash(
            """
            def work():
                raise ConnectionError("relay refused " + KEY)
            thread = threading.Thread(target=work, name="relay-link")
            thread.start()
            thread.join()
        """,
            exit_code=0,
        )
        self.assertIn("Unexpected error in thread relay-link", text)
        self.assertIn("ConnectionError: relay refused ****", text)

    def test_the_agent_crashing_at_start_never_shows_the_key(self):
        """ib_data_agent.main() with the relay link made to blow up with the key in its message."""
        command = [
            PYTHON,
            "-c",
            textwrap.dedent("""
            import os
            import sys
            from agent.relay import link as relay_link
            import ib_data_agent
            def explode(self):
                raise RuntimeError("cannot start: " + os.environ["IB_PROVIDER_KEY"])
            relay_link.RelayLink.start = explode
            sys.exit(ib_data_agent.main(sys.argv[1:]))
        """),
        ]
        agent = AgentProcess(KEY, "ws://127.0.0.1:9/ws/agent", ib_port=free_port(), command=command)
        agent.command += ["--config", str(agent.data_dir / "empty.env")]
        (agent.data_dir / "empty.env").write_text("")
        self.addCleanup(agent.cleanup)
        agent.start()
        self.assertEqual(agent.wait(30), 1)
        everything = agent.everything()
        self.assertIn("IB Data Agent 1.0.0 starting", everything)
        self.assertIn("RuntimeError: cannot start: ****", everything)
        self.assertNotIn(KEY, everything)


if __name__ == "__main__":
    unittest.main()
