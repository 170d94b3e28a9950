"""`python -m tests.fake_tws` as a process: the listening line, a client session, SIGTERM -> exit 0
with the stats file written."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from ibapi import comm
from ibapi.contract import Contract
from ibapi.order import Order
from ibapi.protobuf.ManagedAccounts_pb2 import ManagedAccounts
from ibapi.protobuf.StartApiRequest_pb2 import StartApiRequest
from ibapi.server_versions import MAX_CLIENT_VER

from tests.fake_tws_framing import FrameReader, frame, split_fields
from tests.test_fake_tws_wire import eclient_bytes

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10.0


def read_line(stream) -> str:
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=TIMEOUT_S)


def next_payload(sock: socket.socket, reader: FrameReader) -> bytes:
    pending = reader.__dict__.setdefault("pending", [])  # frames read but not yet returned
    while True:
        pending.extend(reader.payloads())
        if pending:
            return pending.pop(0)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("fake_tws closed the connection")
        reader.feed(data)


def next_message(sock: socket.socket, reader: FrameReader) -> list:
    return split_fields(next_payload(sock, reader))


@unittest.skipUnless(hasattr(signal, "SIGTERM") and os.name == "posix", "needs POSIX signals")
class CliTest(unittest.TestCase):
    def test_port_0_prints_the_port_serves_and_exits_0_on_sigterm_with_stats(self):
        with tempfile.TemporaryDirectory() as tmp:
            stats_file = os.path.join(tmp, "stats.json")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fake_tws",
                    "--port",
                    "0",
                    "--accounts",
                    "DU1111111,U2222222",
                    "--pacing",
                    "reject",
                    "--max-rate",
                    "50",
                    "--max-lines",
                    "10",
                    "--seed",
                    "3",
                    "--tick-delay-ms",
                    "1,2",
                    "--busy-client-ids",
                    "7,8",
                    "--stats-file",
                    stats_file,
                ],
                cwd=str(ROOT),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.addCleanup(proc.kill)
            line = read_line(proc.stdout)
            match = re.fullmatch(r"fake_tws listening on 127\.0\.0\.1:(\d+)\n", line)
            self.assertIsNotNone(match, line)

            with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=TIMEOUT_S) as sock:
                reader = FrameReader()
                sock.sendall(b"API\0" + comm.make_initial_msg("v100..200"))  # a text-only client
                self.assertEqual(next_message(sock, reader)[0], "200")
                sock.sendall(frame([71, 2, 3, ""]))  # startApi, client id 3
                self.assertEqual(next_message(sock, reader), ["15", "1", "DU1111111,U2222222"])
                self.assertEqual(next_message(sock, reader)[0], "9")  # nextValidId

            deadline = time.monotonic() + TIMEOUT_S
            while not os.path.exists(stats_file) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=TIMEOUT_S), 0, proc.stderr.read())
            with open(stats_file, encoding="utf-8") as f:
                stats = json.load(f)
            for key in (
                "connections",
                "messages_in",
                "pacing_violations",
                "line_limit_errors",
                "max_lines_in_use",
                "orders_placed",
            ):
                self.assertIsInstance(stats[key], int, key)
            self.assertEqual((stats["connections"], stats["messages_in"]), (1, 1))
            self.assertEqual(stats["requests_by_type"], {"startApi": 1})
            proc.stdout.close()
            proc.stderr.close()

    def serve(self, *options: str) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_tws", "--port", "0", *options],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(proc.stderr.close)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.wait, TIMEOUT_S)
        self.addCleanup(proc.kill)
        match = re.fullmatch(r"fake_tws listening on 127\.0\.0\.1:(\d+)\n", read_line(proc.stdout))
        self.assertIsNotNone(match)
        return int(match.group(1))

    def handshake(self, port: int, offer: str):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.addCleanup(sock.close)
        reader = FrameReader()
        sock.sendall(b"API\0" + comm.make_initial_msg(offer))
        return sock, reader, next_message(sock, reader)[0]

    def test_default_is_the_newest_version_ibapi_offers_and_speaks_protobuf_there(self):
        sock, reader, version = self.handshake(self.serve(), f"v100..{MAX_CLIENT_VER}")
        self.assertEqual(version, str(MAX_CLIENT_VER))
        body = StartApiRequest(clientId=3, optionalCapabilities="").SerializeToString()
        sock.sendall(struct.pack(">II", 4 + len(body), 71 + 200) + body)  # protobuf startApi
        payload = next_payload(sock, reader)
        self.assertEqual(struct.unpack(">I", payload[:4])[0], 15 + 200)  # managedAccounts, protobuf
        accounts = ManagedAccounts()
        accounts.ParseFromString(payload[4:])
        self.assertEqual(accounts.accountsList, "DU1234567")

    def test_help_names_the_options(self):
        out = subprocess.run(
            [sys.executable, "-m", "tests.fake_tws", "--help"],
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        ).stdout
        for option in ("--max-server-version", "--place-delay-ms", "--stats-file", "--read-only"):
            self.assertIn(option, out)

    def test_oldest_version_place_delay_and_what_if_in_the_stats_file(self):
        """--max-server-version 100 (ibapi's oldest) and --place-delay-ms: a what-if is answered at
        once and not counted, the real order appears after the delay; the stats file counts 1."""
        with tempfile.TemporaryDirectory() as tmp:
            stats_file = os.path.join(tmp, "stats.json")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fake_tws",
                    "--port",
                    "0",
                    "--max-server-version",
                    "100",
                    "--place-delay-ms",
                    "400",
                    "--stats-file",
                    stats_file,
                ],
                cwd=str(ROOT),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.addCleanup(proc.stderr.close)
            self.addCleanup(proc.stdout.close)
            self.addCleanup(proc.kill)
            port = int(re.fullmatch(r"fake_tws listening on 127\.0\.0\.1:(\d+)\n", read_line(proc.stdout)).group(1))
            sock, reader, version = self.handshake(port, f"v100..{MAX_CLIENT_VER}")
            self.assertEqual(version, "100")
            sock.sendall(frame([71, 2, 3, ""]))  # startApi, client id 3
            self.assertEqual(next_message(sock, reader)[0], "15")
            stock = Contract()
            stock.symbol, stock.secType, stock.exchange, stock.currency = "AAPL", "STK", "SMART", "USD"
            sent = time.monotonic()  # before order 5 leaves: the fake may start its delay at once
            for order_id, what_if in ((5, False), (6, True)):
                order = Order()
                order.action, order.totalQuantity, order.orderType, order.lmtPrice = "BUY", 1, "LMT", 1.0
                order.cashQty, order.whatIf = 0, what_if  # ibapi refuses a set cashQty below 111
                sock.sendall(eclient_bytes(100, "placeOrder", order_id, stock, order))
            # At 100 openOrder is [5, msg version 34, orderId, ...], orderStatus [3, 6, orderId, status, ...]
            seen = []
            while ("orderStatus", "5") not in seen:
                fields = next_message(sock, reader)
                if fields[0] in ("5", "3"):
                    seen.append(("openOrder" if fields[0] == "5" else "orderStatus", fields[2]))
            self.assertGreaterEqual(time.monotonic() - sent, 0.4)
            # the preview at once (no status), the held order after the delay
            self.assertEqual(seen, [("openOrder", "6"), ("openOrder", "5"), ("orderStatus", "5")])
            time.sleep(0.6)  # the stats file is rewritten
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=TIMEOUT_S), 0)
            with open(stats_file, encoding="utf-8") as f:
                stats = json.load(f)
            self.assertEqual((stats["orders_placed"], stats["requests_by_type"]["placeOrder"]), (1, 2))

    def test_max_server_version_option_caps_the_answer_and_frames_raw_int_ids(self):
        sock, reader, version = self.handshake(self.serve("--max-server-version", "203"), f"v100..{MAX_CLIENT_VER}")
        self.assertEqual(version, "203")
        sock.sendall(comm.make_msg(71, True, "2\x003\x00\x00"))  # text startApi, raw-int id
        self.assertEqual(next_payload(sock, reader), b"\x00\x00\x00\x0f1\x00DU1234567\x00")


if __name__ == "__main__":
    unittest.main()
