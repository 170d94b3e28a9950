"""RelayLink against the real FakeRelay, with a tiny stand-in action table instead of IB."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import threading
import time
import unittest
import uuid
from unittest import mock

from agent.backoff import ReconnectPolicy
from agent.errors import CANCELLED, INTERNAL, INVALID_REQUEST, Cancelled, UnknownAction
from agent.relay import frames as relay_frames
from agent.relay import link as relay_link
from agent.relay import tls as relay_tls
from agent.relay.link import LinkTimings, Outbox, OutboxLimits, RelayLink
from tests.agent_process import free_port
from tests.fake_relay import FakeRelay, self_signed_relay

KEY = "link-test-key-7f3a9c"
FAST = LinkTimings(
    backoff_min_s=0.05,
    backoff_max_s=0.2,
    stable_s=60,
    auth_retry_s=0.6,
    ping_interval_s=2,
    ping_timeout_s=1,
    status_interval_s=30,
    progress_after_s=0.3,
    progress_interval_s=0.25,
)
IB = {
    "connected": False,
    "host": "127.0.0.1",
    "port": None,
    "client_id": None,
    "accounts": [],
    "account_type": None,
    "server_version": None,
    "market_data_type": None,
    "read_only": None,
    "error": "TWS is not running",
}


class StandInActions:
    """What the worker pool would do, with actions that need no IB: echo, slow (progress), gated, nan."""

    def __init__(self):
        self.executed = []
        self.gate = threading.Event()

        self.orders = {}  # request id -> its answer: the order desk's request-id store, in small

    def names(self):
        return ["echo", "slow", "gated", "nan", "chunks", "place-order", "cancel-order"]

    def __call__(self, job):
        self.executed.append(job.id)
        if job.action not in self.names():
            job.finish(error=UnknownAction(job.action))
            return
        threading.Thread(target=getattr(self, job.action.replace("-", "_")), args=(job,), daemon=True).start()

    def echo(self, job):
        job.finish(data={"params": job.params})

    def place_order(self, job):
        """The desk's promise: the first answer of an id, every time it is asked."""
        answer = self.orders.setdefault(job.id, {"order_id": 100 + len(self.orders), "status": "Submitted"})
        job.finish(data=answer)

    cancel_order = place_order

    def nan(self, job):
        job.finish(data={"value": float("nan")})

    def slow(self, job):
        steps = int(job.params.get("steps", 10))
        for step in range(steps):
            if job.cancel.wait(0.1):
                job.finish(error=Cancelled("cancelled"))
                return
            job.progress(step + 1, steps)
        job.finish(data={"steps": steps})

    def chunks(self, job):
        """A partial frame per step, then the response, then one more partial (too late: dropped)."""
        for step in job.params.get("steps", []):
            job.partial({"expiration": step, "options": [{"step": step}]})
        job.finish(data={"steps": job.params.get("steps", [])})
        job.partial({"expiration": "20991231", "options": []})

    def gated(self, job):
        self.gate.wait(20)
        job.finish(data={"gated": True})


class LinkCase(unittest.TestCase):
    auto_ack = True
    timings = FAST

    def setUp(self):
        self.relay = FakeRelay(key=KEY, auto_ack=self.auto_ack)
        self.relay.start()
        self.addCleanup(self.relay.stop)
        self.actions = StandInActions()
        self.ib = dict(IB)
        self.link = self.make_link(self.relay.url, KEY)

    def make_link(self, url, key, **kwargs):
        link = RelayLink(
            url,
            key,
            "9.9.9-test",
            self.actions.names(),
            lambda: dict(self.ib),
            self.actions,
            timings=kwargs.pop("timings", self.timings),
            **kwargs,
        )
        self.addCleanup(link.stop)
        return link

    def start(self):
        self.link.start()
        return self.relay.wait_hello()

    def tearDown(self):
        self.assertEqual(self.relay.violations, [])


class HelloAndRequests(LinkCase):
    def test_hello_is_the_first_frame_with_session_actions_ib_and_headers(self):
        hello = self.start()
        self.assertEqual(self.relay.frames[0], hello)
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["agent_version"], "9.9.9-test")
        self.assertEqual(str(uuid.UUID(hello["session"])), hello["session"])
        self.assertEqual(hello["actions"], ["echo", "slow", "gated", "nan", "chunks", "place-order", "cancel-order"])
        self.assertEqual(hello["ib"], IB)
        self.assertEqual(self.relay.agent_headers.get("X-Agent-Version"), "9.9.9-test")

    def test_request_gets_its_response_and_the_ack_empties_the_outbox(self):
        self.start()
        response = self.relay.request("echo", {"x": [1, 2]}, id="r1")
        self.assertEqual(response, {"type": "response", "id": "r1", "ok": True, "data": {"params": {"x": [1, 2]}}})
        self.relay.wait_until(lambda: self.link.unacked == 0, what="ack processed")

    def test_status_frame_on_ib_change(self):
        self.start()
        self.ib.update(connected=True, port=7497, accounts=["DU1234567"], account_type="paper", error=None)
        self.link.status_changed()
        status = self.relay.wait_until(lambda: self.relay.last_status, what="status frame")
        self.assertEqual(status["ib"]["accounts"], ["DU1234567"])

    def test_a_response_that_is_not_valid_json_becomes_internal(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "ERROR"):
            response = self.relay.request("nan", id="n1")
        self.assertEqual(response["error"]["code"], INTERNAL)


class PushedFrames(LinkCase):
    """v1.1 frames that belong to no response's delivery: partial, update, event (DESIGN.md 4)."""

    def test_partial_frames_go_out_while_the_request_runs_and_never_after_its_response(self):
        self.start()
        response = self.relay.request("chunks", {"steps": ["20270115", "20270122"]}, id="c1")
        self.assertTrue(response["ok"])
        self.link.push({"type": "status", "ib": dict(self.ib)})  # a frame after the late partial's turn
        self.relay.wait_until(lambda: self.relay.last_status, what="status after the response")
        kinds = [(f["type"], f.get("expiration")) for f in self.relay.frames[1:]]
        self.assertEqual(
            kinds, [("partial", "20270115"), ("partial", "20270122"), ("response", None), ("status", None)]
        )
        self.assertEqual(self.relay.partials["c1"][0]["options"], [{"step": "20270115"}])

    def test_push_sends_while_the_link_is_up_and_says_false_when_it_is_down(self):
        states = []
        self.link = self.make_link(self.relay.url, KEY, hello_fields=lambda: {"subscriptions": ["s1"]})
        self.link.add_link_listener(states.append)
        hello = self.start()
        self.assertEqual(hello["subscriptions"], ["s1"])
        self.relay.wait_until(lambda: states == [True], what="link up")
        event = {"type": "event", "event": "order", "seq": 1, "data": {"order_id": 1}}
        self.assertTrue(self.link.push(event))
        self.relay.wait_until(lambda: self.relay.events == [event], what="event")
        self.assertFalse(self.link.push({"type": "event", "event": "order", "seq": 2, "data": {"bad": float("nan")}}))
        self.relay.drop()
        self.relay.wait_until(lambda: states[:2] == [True, False], what="link down")
        self.relay.wait_hello(connections=2)
        self.relay.wait_until(lambda: states == [True, False, True], what="link up again")
        self.link.stop()
        self.assertFalse(self.link.push(dict(event, seq=3)))
        self.assertEqual([e["seq"] for e in self.relay.events], [1])


class BadFrames(LinkCase):
    def test_frames_without_json_or_usable_id_are_dropped_and_the_link_stays_up(self):
        self.start()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            for text in (
                "this is not json {",
                "[1, 2]",
                json.dumps({"type": "request", "action": "echo"}),
                json.dumps({"type": "request", "id": 7, "action": "echo"}),
                json.dumps({"type": "request", "id": "x" * 129, "action": "echo"}),
                json.dumps({"type": "request", "id": "", "action": "echo"}),
                "[" * 100_000 + "]" * 100_000,
            ):
                self.relay.send_raw(text)
            response = self.relay.request("echo", {}, id="after")
        self.assertTrue(response["ok"])
        self.assertEqual(sum("Ignored a frame" in line for line in logs.output), 7)
        self.assertIn("this is not json", "\n".join(logs.output))
        self.assertEqual(self.relay.connections, 1)
        self.assertEqual(self.actions.executed, ["after"])

    def test_usable_id_with_a_bad_shape_answers_invalid_request(self):
        self.start()
        cases = {
            "no-action": ({"type": "request", "id": "no-action", "params": {}}, "action"),
            "bad-params": ({"type": "request", "id": "bad-params", "action": "echo", "params": [1]}, "params"),
            "bad-type": ({"type": "reqest", "id": "bad-type"}, "type"),
        }
        for frame, _field in cases.values():
            self.relay.send(frame)
        for request_id, (_frame, field) in cases.items():
            response = self.relay.wait_until(lambda: self.relay.responses.get(request_id), what=request_id)
            self.assertEqual(response["error"]["code"], INVALID_REQUEST)
            self.assertTrue(response["error"]["message"].startswith(field + ":"), response)
        self.assertEqual(self.actions.executed, [])

    def test_missing_params_means_empty_params(self):
        self.start()
        self.relay.send({"type": "request", "id": "np", "action": "echo"})
        response = self.relay.wait_until(lambda: self.relay.responses.get("np"), what="response")
        self.assertEqual(response["data"], {"params": {}})


class KeyAcrossACut(LinkCase):
    """Text from the cloud or the network is cut short for log lines and answers; the key is masked
    before every cut (agent.log.clip), so no cut can leave a fragment of it (issue 16)."""

    @staticmethod
    def leaks(text: str) -> bool:
        return any(KEY[:n] in text or KEY[-n:] in text for n in range(4, len(KEY) + 1))

    def test_previews_and_errors_cut_after_masking(self):
        masker = relay_link.agent_log.Masker([KEY])
        for limit, cut in (
            (relay_frames.LOGGED_FRAME_CHARS, relay_link._preview),
            (200, lambda text, limit, m: relay_link._describe(OSError(text), m)),
        ):
            for before in range(limit - len(KEY), limit + 1):
                text = "x" * before + KEY + "y" * 300
                shown = cut(text, limit, masker)
                self.assertFalse(self.leaks(shown), (before, shown))
                self.assertLessEqual(len(shown), limit)

    def test_a_refused_binary_frame_with_the_key_at_its_preview_cut(self):
        self.start()
        cuts = range(relay_frames.LOGGED_FRAME_CHARS - len(KEY), relay_frames.LOGGED_FRAME_CHARS + 1, 3)
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            for before in cuts:
                self.relay.send_binary(("x" * before + KEY + "y" * 200).encode("utf-8"))
            self.assertTrue(self.relay.request("echo", id="after-binary")["ok"])
        self.assertEqual(sum("Ignored a frame" in line for line in logs.output), len(cuts))
        self.assertFalse(any(self.leaks(line) for line in logs.output), logs.output)

    def test_a_repeated_key_path_with_the_key_at_the_cut(self):
        self.start()
        for before in range(relay_link.MAX_PATH_CHARS - len(KEY) - 10, relay_link.MAX_PATH_CHARS, 2):
            request_id = f"rk-{before}"
            key = "k" * (before - len("params.")) + KEY + "z" * 50
            self.relay.send_raw(
                '{"type":"request","id":"%s","action":"echo","params":{"%s":{"a":1,"a":2}}}' % (request_id, key)
            )
            response = self.relay.wait_until(lambda: self.relay.responses.get(request_id), what=request_id)
            message = response["error"]["message"]
            self.assertTrue(message.startswith("params.k"), message)
            self.assertFalse(self.leaks(message), message)


class ProgressAndCancel(LinkCase):
    def test_long_work_sends_throttled_progress_frames(self):
        self.start()
        response = self.relay.request("slow", {"steps": 15}, id="p1")  # 1.5 s of work, a step per 0.1 s
        self.assertTrue(response["ok"])
        frames = self.relay.progress["p1"]
        self.assertGreaterEqual(len(frames), 2)
        self.assertLess(len(frames), 15)  # throttled: not one per step
        self.assertTrue(all(f["total"] == 15 for f in frames))
        self.assertEqual([f["done"] for f in frames], sorted(f["done"] for f in frames))
        self.assertGreaterEqual(frames[0]["done"], 3)  # nothing during the first progress_after_s

    def test_short_work_sends_no_progress(self):
        self.start()
        self.relay.request("slow", {"steps": 2}, id="quick")
        self.assertEqual(self.relay.progress.get("quick", []), [])

    def test_cancel_answers_cancelled(self):
        self.start()
        future = self.relay.submit("slow", {"steps": 200}, id="c1")
        self.relay.wait_until(lambda: "c1" in self.actions.executed, what="job started")
        self.relay.cancel("c1")
        response = future.result(10)
        self.assertEqual(response["error"]["code"], CANCELLED)

    def test_cancel_of_an_unknown_id_is_ignored(self):
        self.start()
        self.relay.cancel("nobody")
        self.assertTrue(self.relay.request("echo", id="still-fine")["ok"])


class Duplicates(LinkCase):
    def test_duplicate_while_running_executes_once_and_answers_once(self):
        self.start()
        first = self.relay.submit("gated", id="d1")
        self.relay.wait_until(lambda: "d1" in self.actions.executed, what="job started")
        second = self.relay.submit("gated", id="d1")
        time.sleep(0.2)  # let the duplicate reach the agent before the work finishes
        self.actions.gate.set()
        self.assertTrue(first.result(10)["ok"])
        self.assertTrue(second.result(10)["ok"])
        self.assertEqual(self.actions.executed, ["d1"])
        self.assertEqual(self.relay.response_counts["d1"], 1)

    def test_duplicate_after_the_ack_is_refused_not_executed(self):
        self.start()
        self.relay.request("echo", id="d2")
        self.relay.wait_until(lambda: self.link.unacked == 0, what="ack processed")
        again = self.relay.request("echo", id="d2")
        self.assertEqual(again["error"]["code"], INVALID_REQUEST)
        self.assertIn("already answered", again["error"]["message"])
        self.assertNotIn("new id", again["error"]["message"])  # the advice that once placed a second order
        self.assertEqual(self.actions.executed, ["d2"])

    def test_an_order_action_repeated_after_the_ack_goes_to_the_desk_for_its_original_answer(self):
        """Issue 16: the link must not answer an acked order id itself; the desk knows its outcome."""
        self.start()
        for action in ("place-order", "cancel-order"):
            with self.subTest(action=action):
                request_id = f"o-{action}"
                first = self.relay.request(action, {"n": 1}, id=request_id)
                self.assertTrue(first["ok"], first)
                self.relay.wait_until(lambda: self.link.unacked == 0, what="ack processed")
                again = self.relay.request(action, {"n": 1}, id=request_id)
                self.assertEqual(again, first)
                self.assertEqual(self.actions.executed.count(request_id), 2)

    def test_an_answered_id_repeated_with_an_action_that_is_not_a_string_is_refused_not_dropped(self):
        self.start()
        self.relay.request("echo", id="d3")
        self.relay.wait_until(lambda: self.link.unacked == 0, what="ack processed")
        self.relay.send({"type": "request", "id": "d3", "action": ["place-order"], "params": {}})
        self.relay.wait_until(lambda: self.relay.response_counts["d3"] == 2, what="the repeat answered")
        self.assertIn("already answered", self.relay.responses["d3"]["error"]["message"])
        self.assertEqual(self.actions.executed, ["d3"])

    def test_an_order_action_dropped_from_the_outbox_also_goes_to_the_desk(self):
        self.link = self.make_link(self.relay.url, KEY, limits=OutboxLimits(max_count=1))
        self.relay.auto_ack = False
        self.start()
        first = self.relay.request("place-order", {}, id="o-dropped")
        self.relay.request("echo", id="pushes-it-out")
        self.assertEqual(self.link.unacked, 1)
        self.assertEqual(self.relay.request("place-order", {}, id="o-dropped"), first)
        self.assertEqual(self.actions.executed, ["o-dropped", "pushes-it-out", "o-dropped"])


class UnackedResponses(LinkCase):
    auto_ack = False

    def test_duplicate_of_a_finished_request_gets_the_stored_response(self):
        self.start()
        first = self.relay.request("echo", {"n": 1}, id="u1")
        self.relay.send({"type": "request", "id": "u1", "action": "echo", "params": {"n": 2}})
        self.relay.wait_until(lambda: self.relay.response_counts["u1"] == 2, what="resent response")
        self.assertEqual(self.relay.responses["u1"], first)
        self.assertEqual(self.actions.executed, ["u1"])

    def test_unacked_responses_are_sent_again_after_a_reconnect_and_forgotten_after_ack(self):
        self.start()
        self.relay.request("echo", id="u2")
        self.assertEqual(self.link.unacked, 1)
        self.relay.drop()
        self.relay.wait_hello(connections=2)
        self.relay.wait_until(lambda: self.relay.response_counts["u2"] == 2, what="response re-sent")
        self.relay.ack("u2")
        self.relay.wait_until(lambda: self.link.unacked == 0, what="ack processed")


class Reconnect(LinkCase):
    def test_a_request_pending_across_a_drop_still_completes(self):
        hello = self.start()
        future = self.relay.submit("gated", id="g1", timeout_s=20)
        self.relay.wait_until(lambda: "g1" in self.actions.executed, what="job started")
        with self.assertLogs("ib_data_agent.relay", "INFO") as logs:
            self.assertTrue(self.relay.drop())
            self.relay.wait_until(lambda: not self.relay.connected, what="drop")
            self.actions.gate.set()
            hello2 = self.relay.wait_hello(connections=2)
            response = future.result(20)
            self.relay.wait_until(lambda: any("Relay connected" in line for line in logs.output), what="log line")
        self.assertTrue(response["ok"])
        self.assertEqual(hello2["session"], hello["session"])
        self.assertEqual(self.actions.executed, ["g1"])
        self.assertIn("Relay connection lost", "\n".join(logs.output))

    def test_relay_not_running_is_reported_once_then_connects_when_it_comes_up(self):
        port = free_port()
        link = self.make_link(f"ws://127.0.0.1:{port}/ws/agent", KEY)
        with self.assertLogs("ib_data_agent.relay", "INFO") as logs:
            link.start()
            self.relay.wait_until(
                lambda: any("WebSocket connection failed" in line for line in logs.output), what="failure line"
            )
            time.sleep(0.5)  # several more attempts at 0.05..0.2 s backoff
            late = FakeRelay(port=port, key=KEY)
            late.start()
            self.addCleanup(late.stop)
            late.wait_hello()
        failures = [line for line in logs.output if "WebSocket connection failed" in line]
        self.assertEqual(len(failures), 1, logs.output)
        self.assertIn("will retry", failures[0])

    def test_why_a_lost_link_cannot_come_back_is_said_once_per_reason_then_that_it_is_back(self):
        """Lost, then refused (the relay is down), then 401 (it came back with another key), then back:
        one line each at INFO or above however many attempts fail, and never the key."""
        port = free_port()
        first = FakeRelay(port=port, key=KEY)
        first.start()
        link = self.make_link(first.url, KEY)
        with self.assertLogs("ib_data_agent.relay", "DEBUG") as logs:
            link.start()
            first.wait_hello()
            first.stop()
            self.relay.wait_until(
                lambda: sum("attempt failed" in line for line in logs.output) >= 3, what="three refused attempts"
            )
            second = FakeRelay(port=port, key="the-key-was-rotated")
            second.start()
            self.addCleanup(second.stop)
            second.wait_until(lambda: second.auth_failures >= 3, what="three refused keys")
            second.key = KEY
            second.wait_hello()
            self.relay.wait_until(
                lambda: any("Relay connected after" in line for line in logs.output), what="the back-online line"
            )
        link.stop()  # before second.stop(), so the teardown is not a lost connection on the console
        shown = [line for line in logs.output if not line.startswith("DEBUG:")]
        expected = [
            ("INFO", "Relay connected"),
            ("WARNING", "Relay connection lost (closed by the server)"),
            ("WARNING", "WebSocket connection failed ("),
            ("ERROR", "Authentication failed"),
            ("INFO", "Relay connected after "),
        ]
        self.assertEqual(len(shown), len(expected), shown)
        for line, (level, start) in zip(shown, expected):
            self.assertTrue(line.startswith(f"{level}:ib_data_agent.relay:{start}"), (line, start))
        self.assertIn("refused", shown[2])
        self.assertNotIn(KEY, "\n".join(logs.output))

    def test_a_dead_link_is_noticed_by_its_pings(self):
        silent = FakeRelay(key=KEY, answer_pings=False)
        silent.start()
        self.addCleanup(silent.stop)
        timings = LinkTimings(backoff_min_s=0.05, backoff_max_s=0.2, ping_interval_s=0.6, ping_timeout_s=0.3)
        link = self.make_link(silent.url, KEY, timings=timings)
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            link.start()
            silent.wait_hello(connections=2, timeout=10)
        self.assertIn("Relay connection lost (ping/pong timed out)", logs.output[0])

    def test_wrong_key_is_retried_slowly_and_says_why(self):
        link = self.make_link(self.relay.url, "wrong-" + KEY)
        with self.assertLogs("ib_data_agent", "INFO") as logs:
            link.start()
            self.relay.wait_until(lambda: self.relay.auth_failures >= 3, timeout=10, what="3 attempts")
        times = self.relay.auth_failure_times
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(gap >= FAST.auth_retry_s * 0.9 for gap in gaps), gaps)
        text = "\n".join(logs.output)
        self.assertIn("Authentication failed", text)
        self.assertIn("Download a fresh copy of the agent from the MA Tracker web app", text)
        self.assertNotIn(KEY, text)
        self.assertEqual(self.relay.connections, 0)

    def test_ws_to_a_public_host_is_refused(self):
        with self.assertRaises(ValueError):
            RelayLink("ws://relay.example.com/ws/agent", KEY, "1", [], dict, print)
        RelayLink("wss://relay.example.com/ws/agent", KEY, "1", [], dict, print)


NO_SYSTEM_ROOTS = {"SSL_CERT_FILE": "/nonexistent/cert.pem", "SSL_CERT_DIR": "/nonexistent/certs"}


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed to make a self-signed certificate")
class Certificates(unittest.TestCase):
    def setUp(self):
        self.relay, self.cert = self_signed_relay(self, KEY)

    def link(self) -> RelayLink:
        link = RelayLink(
            self.relay.url,
            KEY,
            "1",
            ["echo"],
            lambda: dict(IB),
            lambda job: job.finish(data={"echo": job.params}),
            timings=FAST,
        )
        self.addCleanup(link.stop)
        return link

    def test_a_certificate_that_does_not_verify_is_never_accepted_and_the_line_says_what_to_do(self):
        link = self.link()
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            link.start()
            self.relay.wait_until(lambda: logs.output, what="failure line")
            time.sleep(0.5)  # more attempts, none of which may get through
        self.assertEqual(len(logs.output), 1, logs.output)
        self.assertIn(
            "the server's certificate could not be verified (self-signed certificate; "
            "trusted roots: the system's certificate store)",
            logs.output[0],
        )
        self.assertIn("ask your IT department to let 127.0.0.1 through", logs.output[0])
        self.assertEqual(self.relay.connections, 0)

    def test_certifi_roots_are_used_when_this_python_has_none(self):
        # certifi's bundle stands in as the one that trusts the test certificate
        with mock.patch.dict(os.environ, NO_SYSTEM_ROOTS), mock.patch("certifi.where", return_value=self.cert):
            self.assertEqual(relay_tls.tls_context()[1], relay_tls.CERTIFI_ROOTS)
            link = self.link()
        link.start()
        self.relay.wait_hello()
        # over TLS too, a message over the limit is skipped and the link stays up
        big = b'{"type":"request","id":"big","action":"echo","params":{"pad":"' + b"x" * (2 << 20) + b'"}}'
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            self.relay.send_frames([(0x1, big, True)])
            self.assertTrue(self.relay.request("echo", {"n": 1}, id="after-big")["ok"])
        self.assertIn("over the 1 MiB limit", logs.output[0])
        self.assertNotIn("big", self.relay.responses)
        self.assertEqual(self.relay.connections, 1)

    def test_certifi_is_not_consulted_when_the_system_has_roots(self):
        with mock.patch("certifi.where", return_value=self.cert):
            context, roots = relay_tls.tls_context()
            link = self.link()
        self.assertEqual(roots, relay_tls.SYSTEM_ROOTS)
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(context.check_hostname)
        with self.assertLogs("ib_data_agent.relay", "WARNING"):
            link.start()
            self.relay.wait_until(lambda: link._last_error is not None, what="refused")
        self.assertEqual(self.relay.connections, 0)


class CertificateHelp(unittest.TestCase):
    def help_for(self, code: int, message: str) -> str:
        error = ssl.SSLCertVerificationError(1, "certificate verify failed")
        error.verify_code, error.verify_message = code, message
        return relay_tls.tls_help(error, relay_tls.CERTIFI_ROOTS, "relay.ma-tracker.com")

    def test_each_failed_check_says_what_to_do(self):
        self.assertIn(
            "Check that this computer's date, time and time zone are right",
            self.help_for(10, "certificate has expired"),
        )
        unknown = self.help_for(20, "unable to get local issuer certificate")
        self.assertIn("(unable to get local issuer certificate; trusted roots: certifi's CA bundle", unknown)
        self.assertIn("let relay.ma-tracker.com through", unknown)
        self.assertIn("check RELAY_URL", self.help_for(62, "Hostname mismatch, certificate is not valid for 'x'."))
        self.assertIn("contact MA Tracker support", self.help_for(999, "something new"))


class _RelayBackoff:
    """The relay's ReconnectPolicy (its LinkTimings) driven the way RelayLink drives it, on a pinned
    clock: after(opened, lasted_s) is one connection attempt that ended, and the wait it returns."""

    def __init__(self, timings, rand):
        self.now = 0.0
        self.policy = ReconnectPolicy(
            timings.backoff_min_s, timings.backoff_max_s, timings.stable_s, rand=rand, clock=lambda: self.now
        )

    def after(self, opened, lasted_s):
        if opened:
            self.now = 0.0
            self.policy.connected()
            self.now = lasted_s
            self.policy.disconnected()
        return self.policy.next_wait()


class ReconnectTiming(unittest.TestCase):
    """The wait before a redial, as pure logic: `rand` pinned to 1.0 gives the whole jitter window."""

    def backoff(self, timings=LinkTimings(), rand=lambda: 1.0):
        return _RelayBackoff(timings, rand)

    def test_each_failed_dial_doubles_the_window_up_to_the_cap(self):
        backoff = self.backoff(LinkTimings(backoff_min_s=1, backoff_max_s=15))
        self.assertEqual([backoff.after(False, 0.0) for _ in range(7)], [1, 2, 4, 8, 15, 15, 15])

    def test_the_wait_is_full_jitter_over_the_window(self):
        draws = iter([0.0, 0.5, 0.25])
        backoff = self.backoff(LinkTimings(backoff_min_s=1, backoff_max_s=15), rand=lambda: next(draws))
        self.assertEqual([backoff.after(False, 0.0) for _ in range(3)], [0.0, 1.0, 1.0])

    def test_a_flapping_link_is_back_within_20_s_with_the_product_timings(self):
        """Finding 2: connections that drop after a second never pushed the wait past the cap."""
        backoff = self.backoff()
        waits = [backoff.after(True, 1.0) for _ in range(50)]
        self.assertLessEqual(max(waits), 20)
        self.assertEqual(max(waits), LinkTimings().backoff_max_s)

    def test_a_connection_that_stayed_up_stable_s_starts_over_and_a_shorter_one_does_not(self):
        timings = LinkTimings()
        self.assertLessEqual(timings.stable_s, 10)
        backoff = self.backoff(timings)
        for _ in range(6):
            backoff.after(False, 0.0)
        self.assertEqual(backoff.after(True, timings.stable_s - 0.1), timings.backoff_max_s)
        self.assertEqual(backoff.after(False, 3600.0), timings.backoff_max_s)  # a slow failed dial: no reset
        self.assertEqual(backoff.after(True, timings.stable_s), timings.backoff_min_s)
        self.assertEqual(backoff.after(False, 0.0), 2 * timings.backoff_min_s)

    def test_the_link_uses_the_shared_policy_with_its_own_figures(self):
        link = RelayLink("ws://127.0.0.1:9/ws/agent", KEY, "1", ["fetch-chain"], dict, lambda job: None)
        self.assertIsInstance(link._backoff, ReconnectPolicy)
        self.assertEqual((link._backoff.first_s, link._backoff.cap_s, link._backoff.stable_after_s), (1.0, 15.0, 10.0))


class OutboxLimitsTest(unittest.TestCase):
    def test_count_bytes_and_age_are_bounded_oldest_first(self):
        outbox = Outbox(OutboxLimits(max_age_s=0.2, max_count=3, max_bytes=100))
        with self.assertLogs("ib_data_agent.relay", "WARNING") as logs:
            for n in range(4):
                outbox.put(f"id{n}", "x" * 10)
            self.assertEqual(outbox.get("id0"), None)
            self.assertEqual(len(outbox), 3)
            outbox.put("big", "y" * 80)  # 3 x 10 + 80 > 100: the oldest go until it fits
            self.assertEqual(outbox.texts(), ["x" * 10, "x" * 10, "y" * 80])
            time.sleep(0.3)
            outbox.expire()
            self.assertEqual(len(outbox), 0)
        self.assertEqual(len(logs.output), 5)
        self.assertIn("Dropped the response to request id0", logs.output[0])
        self.assertTrue(outbox.was_answered("id0"))

    def test_ack_forgets_the_response_but_remembers_the_id(self):
        outbox = Outbox(OutboxLimits())
        outbox.put("a", "{}")
        self.assertTrue(outbox.ack("a"))
        self.assertFalse(outbox.ack("a"))
        self.assertEqual(len(outbox), 0)
        self.assertTrue(outbox.was_answered("a"))
        self.assertFalse(outbox.was_answered("b"))


if __name__ == "__main__":
    unittest.main()
