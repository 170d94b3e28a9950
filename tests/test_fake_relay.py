"""The cloud double: its WebSocket and HTTP API, driven by a hand-written stand-in agent."""

from __future__ import annotations

import json
import threading
import unittest

import websocket

from tests.agent_process import RelayClient, ServerProcess
from tests.fake_relay import IB_KEYS, AgentNotConnected, FakeRelay, RequestTimedOut

KEY = "relay-test-key"
IB = dict.fromkeys(IB_KEYS)  # the IB status object's keys, as the fake relay checks them
HELLO = {"type": "hello", "protocol": 1, "agent_version": "t", "session": "s", "actions": ["echo"], "ib": IB}


class StandInAgent:
    """A bare WebSocket client playing the agent: answers every request with its params."""

    def __init__(self, url: str, key: str = KEY, answer: bool = True):
        self.ws = websocket.create_connection(url, header=[f"Authorization: Bearer {key}"], timeout=10)
        self.received = []
        self.answer = answer
        self.ws.send(json.dumps(HELLO))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            while True:
                text = self.ws.recv()
                self.received.append(text)
                frame = json.loads(text) if isinstance(text, str) and text.startswith("{") else {}
                if frame.get("type") == "request" and self.answer:
                    self.send({"type": "response", "id": frame["id"], "ok": True, "data": frame["params"]})
        except (websocket.WebSocketException, OSError):
            pass

    def send(self, frame: dict):
        self.ws.send(json.dumps(frame))

    def close(self):
        self.ws.close()
        self._thread.join(5)


class RelayCase(unittest.TestCase):
    def setUp(self):
        self.relay = FakeRelay(key=KEY)
        self.relay.start()
        self.addCleanup(self.relay.stop)
        self.http = RelayClient(self.relay.port, KEY)

    def agent(self, **kwargs) -> StandInAgent:
        agent = StandInAgent(self.relay.url, **kwargs)
        self.addCleanup(agent.close)
        self.relay.wait_hello(connections=self.relay.connections)
        return agent


class Api(RelayCase):
    def test_wrong_key_is_refused_with_401_at_the_upgrade(self):
        with self.assertRaises(websocket.WebSocketBadStatusException) as caught:
            StandInAgent(self.relay.url, key="nope")
        self.assertEqual(caught.exception.status_code, 401)
        self.assertEqual(self.relay.auth_failures, 1)
        self.assertEqual(self.relay.connections, 0)

    def test_request_over_http_returns_the_response_and_the_agent_gets_an_ack(self):
        agent = self.agent()
        response = self.http.request("echo", {"a": 1}, id="h1")
        self.assertEqual(response, {"type": "response", "id": "h1", "ok": True, "data": {"a": 1}})
        self.relay.wait_until(lambda: '{"type": "ack", "id": "h1"}' in agent.received, what="ack")
        status = self.http.status()
        self.assertTrue(status["connected"])
        self.assertEqual(status["hello"], HELLO)
        self.assertIsNone(status["status"])

    def test_http_request_needs_the_key(self):
        self.agent()
        with self.assertRaises(RelayClient.Error) as caught:
            RelayClient(self.relay.port, "wrong").request("echo")
        self.assertEqual(caught.exception.status, 401)

    def test_503_without_an_agent_and_504_on_timeout(self):
        with self.assertRaises(RelayClient.Error) as caught:
            self.http.request("echo")
        self.assertEqual(caught.exception.status, 503)
        with self.assertRaises(AgentNotConnected):
            self.relay.request("echo")
        self.agent(answer=False)
        with self.assertRaises(RelayClient.Error) as caught:
            self.http.request("echo", timeout_s=0.3)
        self.assertEqual(caught.exception.status, 504)
        with self.assertRaises(RequestTimedOut):
            self.relay.request("echo", timeout_s=0.3)

    def test_raw_is_sent_verbatim_and_cancel_is_a_cancel_frame(self):
        agent = self.agent(answer=False)
        self.http.send_raw("not json {")
        self.relay.cancel("c9")
        self.relay.wait_until(lambda: len(agent.received) == 2, what="two frames")
        self.assertEqual(agent.received, ["not json {", '{"type": "cancel", "id": "c9"}'])

    def test_raw_binary_1_sends_the_body_as_one_binary_frame(self):
        agent = self.agent(answer=False)
        self.http._call("POST", "/api/raw?binary=1", b'{"type":"request","id":"b1"}\xff')
        self.relay.send_binary(b"\x00\x01")
        self.relay.wait_until(lambda: len(agent.received) == 2, what="two frames")
        self.assertEqual(agent.received, [b'{"type":"request","id":"b1"}\xff', b"\x00\x01"])

    def test_send_frames_writes_fragments_and_large_frames_as_given(self):
        agent = self.agent(answer=False)
        agent.ws.settimeout(30)
        self.relay.send_frames(
            [
                (0x1, b'{"a":', False),
                (0x9, b"ping", True),
                (0x0, b'"', False),
                (0x0, (b"x", 70_000), False),
                (0x0, b'"}', True),
            ]
        )
        self.relay.wait_until(lambda: len(agent.received) == 1, what="the message put together")
        self.assertEqual(json.loads(agent.received[0]), {"a": "x" * 70_000})

    def test_progress_is_kept_per_request_id(self):
        agent = self.agent()
        for done in (1, 2):
            agent.send({"type": "progress", "id": "p1", "done": done, "total": 3})
        self.relay.wait_until(lambda: len(self.relay.progress["p1"]) == 2, what="progress")
        self.assertEqual([f["done"] for f in self.http.progress("p1")], [1, 2])
        self.assertEqual(self.http.progress("other"), [])


class Delivery(RelayCase):
    def test_drop_cuts_the_agent_and_a_response_resent_after_reconnect_completes_the_request(self):
        first = self.agent(answer=False)
        pending = self.relay.submit("echo", {"n": 1}, id="x1", timeout_s=10)
        self.relay.wait_until(lambda: first.received, what="request delivered")
        self.assertTrue(self.http.drop())
        first._thread.join(5)
        self.assertFalse(first._thread.is_alive())  # the stand-in's recv failed: the socket is gone
        self.assertFalse(self.http.status()["connected"])
        second = self.agent(answer=False)
        second.send({"type": "response", "id": "x1", "ok": True, "data": {"late": True}})
        self.assertEqual(pending.result(10)["data"], {"late": True})
        second.send({"type": "response", "id": "x1", "ok": True, "data": {"late": True}})
        self.relay.wait_until(lambda: self.relay.response_counts["x1"] == 2, what="count")
        self.assertEqual(self.relay.violations, [])

    def test_a_send_into_a_connection_being_cut_is_agent_not_connected_and_not_resent(self):
        self.agent(answer=False)

        async def cut_then_request():  # no await in between: the connection is closing, not gone yet
            self.assertTrue(await self.relay._drop())
            return await self.relay._request({"type": "request", "id": "cut", "action": "echo", "params": {}}, 5)

        with self.assertRaises(AgentNotConnected) as caught:
            self.relay._run(cut_then_request())
        self.assertEqual(caught.exception.http_status, 503)
        second = self.agent()
        self.assertEqual(self.http.request("echo", {"after": 1})["data"], {"after": 1})
        self.assertNotIn("cut", "".join(second.received))  # its caller had its 503: nothing to resend

    def test_requests_still_pending_are_sent_again_after_the_agent_reconnects(self):
        first = self.agent(answer=False)  # takes the requests and dies with them: frames lost in a cut
        over_python = self.relay.submit("echo", {"n": 1}, id="lost-py", timeout_s=20)
        results = []
        over_http = threading.Thread(
            target=lambda: results.append(self.http.request("echo", {"n": 2}, id="lost-http", timeout_s=20))
        )
        over_http.start()
        self.relay.wait_until(lambda: len(first.received) == 2, what="both requests at the first agent")
        self.assertTrue(self.relay.drop())
        second = self.agent()  # answers: the resent frames are what it answers
        self.assertEqual(over_python.result(10)["data"], {"n": 1})
        over_http.join(10)
        self.assertEqual([r["data"] for r in results], [{"n": 2}])
        requests = [json.loads(text)["id"] for text in second.received if '"request"' in text]
        self.assertEqual(sorted(requests), ["lost-http", "lost-py"])
        self.assertEqual(self.relay.resent_requests, 2)

    def test_a_request_already_answered_is_not_sent_again(self):
        self.agent()
        self.assertTrue(self.relay.request("echo", id="answered")["ok"])
        self.assertTrue(self.relay.drop())
        second = self.agent()
        self.assertEqual(self.relay.request("echo", id="next")["id"], "next")
        self.assertNotIn("answered", "".join(second.received))
        self.assertEqual(self.relay.resent_requests, 0)

    def test_protocol_violations_are_recorded(self):
        ws = websocket.create_connection(self.relay.url, header=[f"Authorization: Bearer {KEY}"])
        self.addCleanup(ws.close)
        ws.send(json.dumps({"type": "response", "id": "r", "ok": False, "error": {"code": "NOPE"}}))
        ws.send(json.dumps({"type": "progress", "id": "r"}))
        self.relay.wait_until(lambda: len(self.relay.violations) >= 3, what="violations")
        text = "\n".join(self.relay.violations)
        self.assertIn("first frame of a connection is 'response', not hello", text)
        self.assertIn("response.error malformed", text)
        self.assertIn("progress frame malformed", text)

    def test_v11_pushed_frames_are_recorded_and_a_seq_that_does_not_grow_is_a_violation(self):
        agent = self.agent()
        option = {"ticker": "AAPL"}
        frames = [
            {"type": "partial", "id": "c1", "expiration": "20270115", "options": [option]},
            {"type": "update", "subscription": "s1", "seq": 1, "options": [option], "underlyings": {}},
            {"type": "update", "subscription": "s1", "seq": 3, "options": [], "underlyings": {"AAPL": {}}},
            {"type": "update", "subscription": "s2", "seq": 1, "options": [], "underlyings": {}},
            {"type": "event", "event": "order", "seq": 1, "data": {"order_id": 5}},
            {"type": "event", "event": "order", "seq": 2, "data": {"order_id": 5}},
        ]
        for frame in frames:
            agent.send(frame)
        self.relay.wait_until(lambda: len(self.relay.events) == 2, what="events")
        self.assertEqual(self.relay.violations, [])  # a gap (s1: 1 then 3) is not a violation
        self.assertEqual(self.relay.partials["c1"], frames[:1])
        self.assertEqual([f["seq"] for f in self.relay.updates["s1"]], [1, 3])
        self.assertEqual(self.http.frames()["frames"][1:], frames)
        agent.send({"type": "update", "subscription": "s1", "seq": 3, "options": [], "underlyings": {}})
        agent.send({"type": "event", "event": "order", "seq": 1, "data": {}})
        agent.send({"type": "partial", "id": "c1", "expiration": "2027-01-15", "options": []})
        agent.send({"type": "event", "event": "fill", "seq": 9, "data": {}})
        self.relay.wait_until(lambda: len(self.relay.violations) >= 4, what="violations")
        text = "\n".join(self.relay.violations)
        self.assertIn("update seq 3 after 3 (s1)", text)
        self.assertIn("event seq 1 after 2 (s)", text)
        self.assertIn("partial.expiration missing or of the wrong type", text)
        self.assertIn("event.event missing or of the wrong type", text)

    def test_a_second_agent_replaces_the_first(self):
        first = self.agent()
        self.agent()
        first._thread.join(5)
        self.assertFalse(first._thread.is_alive())
        self.assertEqual(self.http.request("echo", {"b": 2})["data"], {"b": 2})


class CommandLine(unittest.TestCase):
    def test_cli_prints_its_port_serves_and_exits_0_on_sigterm(self):
        server = ServerProcess("tests.fake_relay", ["--key", KEY])
        self.addCleanup(server.stop)
        port = server.start()
        self.assertIn(f"fake_relay listening on 127.0.0.1:{port}", server.output)
        client = RelayClient(port, KEY)
        self.assertEqual(client.status()["connected"], False)
        agent = StandInAgent(client.url)
        self.addCleanup(agent.close)
        client.wait_hello(10)
        self.assertEqual(client.request("echo", {"c": 3})["data"], {"c": 3})
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
