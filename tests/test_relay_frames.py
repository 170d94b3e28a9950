"""Frames a hostile or broken cloud may send (DESIGN.md 4, issue 18 "Relay link"): over 1 MiB (also in
fragments), binary, text that is not UTF-8, JSON with a repeated key, and bad frames carrying the id
of a running request. Each is logged and dropped, or answered INVALID_REQUEST, and the link stays up.

The link against the real FakeRelay with stand-in actions (as tests/test_relay_link.py), and the agent
as a process for the memory figures: its RSS, sampled with psutil while a 2 MiB and a 64 MiB frame
go by, must not grow by 32 MB.
"""

from __future__ import annotations

import json
import threading
import time
import unittest

import psutil

from agent.errors import INVALID_REQUEST
from agent.relay.frames import MAX_MESSAGE_BYTES, BoundedFrameReader
from tests.agent_process import AgentStack, RelayClient
from tests.test_relay_link import LinkCase

TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9
MiB = 1024 * 1024
RSS_LIMIT = 32 * 1000 * 1000


def request_bytes(request_id: str, size: int, action: str = "echo") -> list:
    """A valid request frame of exactly `size` bytes, as send_frames pieces (its padding is repeated,
    never built whole)."""
    head = ('{"type":"request","id":"%s","action":"%s","params":{"pad":"' % (request_id, action)).encode()
    tail = b'"}}'
    pad = size - len(head) - len(tail)
    return [head, (b"x" * 4096, pad // 4096), b"x" * (pad % 4096), tail]


def fragments(pieces_of_one_message: list, count: int, opcode: int = TEXT) -> list:
    """`count` frames of one message: the first carries the head, the last the tail, the padding
    (a (chunk, n) piece) split evenly among them."""
    head, (chunk, n), rest, tail = pieces_of_one_message
    per = n // count
    frames = []
    for k in range(count):
        payload = [(chunk, per if k < count - 1 else n - per * (count - 1))]
        if k == 0:
            payload.insert(0, head)
        if k == count - 1:
            payload += [rest, tail]
        frames.append((opcode if k == 0 else CONT, payload, k == count - 1))
    return frames


class LinkFrames(LinkCase):
    def ignored(self, logs) -> list:
        return [line for line in logs.output if "Ignored a frame from the cloud" in line]

    def assert_link_up_and_answering(self, request_id: str = "after"):
        response = self.relay.request("echo", {"n": 1}, id=request_id)
        self.assertTrue(response["ok"], response)
        self.assertEqual(self.relay.connections, 1)

    def test_the_bounded_reader_reads_every_frame_of_the_connection(self):
        self.start()
        self.assertIsInstance(self.link._app.sock.frame_buffer, BoundedFrameReader)
        self.assert_link_up_and_answering()

    def test_a_binary_frame_is_logged_and_dropped_never_executed(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            data = json.dumps({"type": "request", "id": "bin", "action": "echo"}).encode()
            self.relay.send_binary(data)
            self.assert_link_up_and_answering()
        self.assertEqual(len(self.ignored(logs)), 1, logs.output)
        self.assertIn(f"(binary frame, {len(data)} bytes)", self.ignored(logs)[0])
        self.assertIn('"id": "bin"', self.ignored(logs)[0])  # its id is only logged
        self.assertEqual(self.actions.executed, ["after"])

    def test_text_that_is_not_utf8_is_logged_and_dropped_never_executed(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_frames(
                [(TEXT, b'{"type":"request","id":"bad-utf8","action":"echo","params":{"x":"\xff"}}', True)]
            )
            self.relay.send_frames(
                [
                    (TEXT, b'{"type":"request","id":"cut-utf8",', False),
                    (CONT, b'"action":"echo","params":{"x":"\xe2\x82"}}', True),
                ]
            )
            self.assert_link_up_and_answering()
        lines = self.ignored(logs)
        self.assertEqual(len(lines), 2, logs.output)
        self.assertTrue(all("text that is not valid UTF-8" in line for line in lines), lines)
        self.assertIn("bad-utf8", lines[0])
        self.assertIn('"x":"\ufffd"}}', lines[0])

    def test_control_characters_of_a_refused_frame_are_escaped_in_its_log_line(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_raw("\x1b[2J\x1b[31mnot json\r\n")
            self.relay.send_binary(b"\x1b]0;title\x07\x00")
            self.assert_link_up_and_answering()
        lines = self.ignored(logs)
        self.assertTrue(lines[0].endswith("(not a JSON object): \\x1b[2J\\x1b[31mnot json\\r\\n"), lines[0])
        self.assertTrue(lines[1].endswith("(binary frame, 11 bytes): \\x1b]0;title\\x07\\x00"), lines[1])
        self.assertFalse(any(ch in "".join(lines) for ch in "\x1b\x07\x00\r\n"))
        self.assertEqual(self.actions.executed, ["after"])

    def test_a_message_in_fragments_with_a_ping_between_them_is_executed_once(self):
        self.start()
        future = self.relay.submit("echo", id="unused")  # a waiter for the response to "frag"
        future.result(10)
        self.relay.send_frames(
            [
                (TEXT, b'{"type":"request","id":"frag",', False),
                (PING, b"hi", True),
                (CONT, b'"action":"echo",', False),
                (CONT, b'"params":{"s":"\xc3\xa9"}}', True),
            ]
        )
        response = self.relay.wait_until(lambda: self.relay.responses.get("frag"), what="frag answered")
        self.assertEqual(response["data"], {"params": {"s": "\u00e9"}})
        self.assertEqual(self.actions.executed, ["unused", "frag"])
        self.assert_link_up_and_answering()

    def test_a_message_of_exactly_1_mib_is_executed(self):
        self.start()
        self.relay.send_frames([(TEXT, request_bytes("one-mib", MAX_MESSAGE_BYTES), True)])
        response = self.relay.wait_until(lambda: self.relay.responses.get("one-mib"), what="1 MiB answered")
        self.assertTrue(response["ok"])
        head_and_tail = len('{"type":"request","id":"one-mib","action":"echo","params":{"pad":""}}')
        self.assertEqual(len(response["data"]["params"]["pad"]), MAX_MESSAGE_BYTES - head_and_tail)

    def test_over_1_mib_in_one_frame_or_in_fragments_is_skipped_and_the_link_stays_up(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_frames([(TEXT, request_bytes("two-mib", 2 * MiB), True)])
            self.relay.send_frames(fragments(request_bytes("frag-1.5", 3 * MiB // 2), 3))
            self.relay.send_frames([(TEXT, request_bytes("just-over", MAX_MESSAGE_BYTES + 1), True)])
            self.assert_link_up_and_answering()
        lines = self.ignored(logs)
        self.assertEqual(len(lines), 3, logs.output)
        for line, size, request_id in zip(
            lines, (2 * MiB, 3 * MiB // 2, MiB + 1), ("two-mib", "frag-1.5", "just-over")
        ):
            self.assertIn(f"({size:,} bytes, over the 1 MiB limit)", line)
            self.assertIn(f'"id":"{request_id}"', line)
        self.assertEqual(self.actions.executed, ["after"])

    def test_a_repeated_key_at_any_depth_is_invalid_request_naming_it(self):
        self.start()
        frames = {
            "dup-top": '{"type":"request","id":"dup-top","action":"echo","action":"slow","params":{}}',
            "dup-deep": '{"type":"request","id":"dup-deep","action":"echo","params":{"contracts":'
            '[{"strike":1},{"strike":2,"right":"C","strike":3}]}}',
            "dup-type": '{"type":"request","type":"ack","id":"dup-type","action":"echo"}',
            "dup-both": '{"type":"request","type":"ack","id":"x","id":"dup-both","action":"echo"}',
            "dup-long": '{"type":"request","id":"dup-long","action":"echo","params":{"%s":1,"%s":2}}'
            % ("k" * 5000, "k" * 5000),
        }
        for text in frames.values():
            self.relay.send_raw(text)
        expected = {
            "dup-top": "action: repeated key",
            "dup-deep": "params.contracts[1].strike: repeated key",
            "dup-type": "type: repeated key",
            "dup-long": "params." + "k" * 190 + "...: repeated key",
        }
        for request_id, start in expected.items():
            response = self.relay.wait_until(lambda: self.relay.responses.get(request_id), what=request_id)
            self.assertEqual(response["error"]["code"], INVALID_REQUEST)
            self.assertTrue(response["error"]["message"].startswith(start), response)
        self.assert_link_up_and_answering()
        self.assertNotIn("dup-both", self.relay.responses)  # its id is repeated too: no usable id
        self.assertNotIn("x", self.relay.responses)
        self.assertEqual(self.actions.executed, ["after"])

    def test_a_repeated_id_has_no_usable_id_and_is_only_logged(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_raw('{"type":"request","id":"first","id":"second","action":"echo"}')
            self.assert_link_up_and_answering()
        self.assertIn("(the key id is repeated)", self.ignored(logs)[0])
        self.assertNotIn("first", self.relay.responses)
        self.assertNotIn("second", self.relay.responses)
        self.assertEqual(self.actions.executed, ["after"])

    def test_a_bad_frame_carrying_a_running_id_never_answers_it(self):
        self.start()
        future = self.relay.submit("gated", id="run-1", timeout_s=30)
        self.relay.wait_until(lambda: "run-1" in self.actions.executed, what="run-1 started")
        bad_text = [
            '{"type":"reqest","id":"run-1"}',
            '{"type":"request","id":"run-1","action":"echo","params":{"a":1,"a":2}}',
            '{"type":"cancel","id":"run-1","id2":0,"id2":1}',
            '{"type":"request","id":"run-1","action":"echo","params":[1]}',
        ]
        with self.assertLogs("ib_data_agent.relay", "INFO") as logs:
            for text in bad_text:
                self.relay.send_raw(text)
            self.relay.send_binary(b'{"type":"request","id":"run-1","action":"echo"}')
            self.relay.send_frames([(TEXT, b'{"type":"request","id":"run-1","action":"\xff"}', True)])
            self.relay.send_frames([(TEXT, request_bytes("run-1", 2 * MiB), True)])
            self.assert_link_up_and_answering("probe-1")
            self.actions.gate.set()
            response = future.result(20)
            self.assert_link_up_and_answering("probe-2")  # a later round trip: a second answer would be in
        self.assertEqual(response, {"type": "response", "id": "run-1", "ok": True, "data": {"gated": True}})
        self.assertEqual(self.relay.response_counts["run-1"], 1)
        self.assertEqual(self.actions.executed, ["run-1", "probe-1", "probe-2"])
        text = "\n".join(logs.output)
        self.assertEqual(text.count("for request run-1, which is running"), 3, text)
        self.assertFalse(any(job.cancel.is_set() for job in self.link._running.values()))

    def test_a_control_frame_over_125_bytes_reconnects_at_once_with_one_line(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_frames([(PING, b"p" * 200, True)])
            self.relay.wait_hello(connections=2)
        self.assertEqual(len(logs.output), 1, logs.output)
        self.assertIn("Relay connection lost (control frame of 200 bytes); reconnecting", logs.output[0])


class StoredResponses(LinkCase):
    auto_ack = False

    def test_a_bad_frame_does_not_replace_a_response_the_cloud_may_ask_for_again(self):
        self.start()
        first = self.relay.request("echo", {"n": 1}, id="kept")
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_raw('{"type":"bogus","id":"kept"}')
            self.relay.send_raw('{"type":"request","id":"kept","action":"echo","x":1,"x":2}')
            self.relay.send({"type": "request", "id": "kept", "action": "echo", "params": {"n": 2}})
            self.relay.wait_until(lambda: self.relay.response_counts["kept"] == 2, what="stored response again")
        self.assertEqual(self.relay.responses["kept"], first)
        self.assertEqual(sum("for request kept, which was already answered" in line for line in logs.output), 2)
        self.assertEqual(self.actions.executed, ["kept"])


class AgentMemory(unittest.TestCase):
    """The agent as a process (no TWS needed: `status` answers without it); its RSS sampled every
    5 ms from before a big frame is sent until a request after it is answered."""

    @classmethod
    def setUpClass(cls):
        cls.stack = AgentStack(tws=False)
        cls.stack.start()
        cls.process = psutil.Process(cls.stack.agent.pid)
        cls.stack.relay.request("status", id="warm-up", timeout_s=30)

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def tearDown(self):
        self.assertEqual(self.stack.relay.violations, [])

    def growth_while(self, send) -> int:
        """Peak RSS minus RSS before, while send() runs and a status request after it is answered."""
        relay = self.stack.relay
        before = self.process.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            send()
            response = relay.request("status", timeout_s=60)
        finally:
            done.set()
            sampler.join(5)
        self.assertTrue(response["ok"], response)
        return peak[0] - before

    def check(self, name: str, request_id: str, frames: list, size: int):
        relay = self.stack.relay
        connections = relay.connections
        growth = self.growth_while(lambda: relay.send_frames(frames))
        print(f"\n[figures] {name}: agent RSS growth {growth / 1e6:.1f} MB", flush=True)
        self.assertLess(growth, RSS_LIMIT)
        self.assertEqual(relay.connections, connections, "the link went down")
        self.assertNotIn(request_id, relay.responses)  # never executed
        self.stack.agent.wait_for_output(
            f"Ignored a frame from the cloud \\({size:,} bytes, over the 1 MiB limit\\): .*{request_id}", timeout=10
        )

    def test_a_2_mib_frame(self):
        self.check("2 MiB frame", "big-2", [(TEXT, request_bytes("big-2", 2 * MiB, "status"), True)], 2 * MiB)

    def test_a_64_mib_frame(self):
        self.check("64 MiB frame", "big-64", [(TEXT, request_bytes("big-64", 64 * MiB, "status"), True)], 64 * MiB)

    def test_a_binary_frame_through_the_http_api_is_dropped_and_the_link_stays_up(self):
        relay = self.stack.relay
        connections = relay.connections
        RelayClient(relay.port, self.stack.key)._call(
            "POST", "/api/raw?binary=1", b'{"type":"request","id":"bin-http","action":"status"}'
        )
        self.stack.agent.wait_for_output(
            'Ignored a frame from the cloud \\(binary frame, 52 bytes\\): .*"bin-http"', timeout=10
        )
        self.assertTrue(relay.request("status", timeout_s=30)["ok"])
        self.assertNotIn("bin-http", relay.responses)
        self.assertEqual(relay.connections, connections)

    def test_64_mib_in_64_fragments(self):
        self.check(
            "64 MiB in 64 fragments", "frag-64", fragments(request_bytes("frag-64", 64 * MiB, "status"), 64), 64 * MiB
        )


if __name__ == "__main__":
    unittest.main()
