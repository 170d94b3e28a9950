"""`python -m tests.fake_tws` as a process: the listening line, a client session, SIGTERM -> exit 0
with the stats file written."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from ibapi import comm

from tests.fake_tws_wire import FrameReader, frame, split_fields

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10.0


def read_line(stream) -> str:
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=TIMEOUT_S)


def next_message(sock: socket.socket, reader: FrameReader) -> list:
    while True:
        payloads = reader.payloads()
        if payloads:
            return split_fields(payloads[0])
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("fake_tws closed the connection")
        reader.feed(data)


@unittest.skipUnless(hasattr(signal, "SIGTERM") and os.name == "posix", "needs POSIX signals")
class CliTest(unittest.TestCase):
    def test_port_0_prints_the_port_serves_and_exits_0_on_sigterm_with_stats(self):
        with tempfile.TemporaryDirectory() as tmp:
            stats_file = os.path.join(tmp, "stats.json")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fake_tws", "--port", "0", "--accounts", "DU1111111,U2222222",
                 "--pacing", "reject", "--max-rate", "50", "--max-lines", "10", "--seed", "3",
                 "--tick-delay-ms", "1,2", "--busy-client-ids", "7,8", "--stats-file", stats_file],
                cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(proc.kill)
            line = read_line(proc.stdout)
            match = re.fullmatch(r"fake_tws listening on 127\.0\.0\.1:(\d+)\n", line)
            self.assertIsNotNone(match, line)

            with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=TIMEOUT_S) as sock:
                reader = FrameReader()
                sock.sendall(b"API\0" + comm.make_initial_msg("v100..203"))
                self.assertEqual(next_message(sock, reader)[0], "200")
                sock.sendall(frame([71, 2, 3, ""]))                      # startApi, client id 3
                self.assertEqual(next_message(sock, reader), ["15", "1", "DU1111111,U2222222"])
                self.assertEqual(next_message(sock, reader)[0], "9")    # nextValidId

            deadline = time.monotonic() + TIMEOUT_S
            while not os.path.exists(stats_file) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=TIMEOUT_S), 0, proc.stderr.read())
            with open(stats_file, encoding="utf-8") as f:
                stats = json.load(f)
            for key in ("connections", "messages_in", "pacing_violations", "line_limit_errors",
                        "max_lines_in_use", "orders_placed"):
                self.assertIsInstance(stats[key], int, key)
            self.assertEqual((stats["connections"], stats["messages_in"]), (1, 1))
            self.assertEqual(stats["requests_by_type"], {"startApi": 1})
            proc.stdout.close()
            proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
