"""Streamed chains (issue 19, DESIGN.md 4 `partial` frames): fetch-chain with "partial": true sends
one partial frame per expiration, nearest first, each with all of that expiration's options, before
the response that still carries everything. The ordering logic alone (ExpirationRelease) and the
real agent process against tests.fake_tws and tests.fake_relay."""

from __future__ import annotations

import unittest

from agent.ib.scanner import ExpirationRelease
from tests.agent_process import E2ECase


def option(expiration: str, strike: float) -> dict:
    return {"expiration": expiration, "strike": strike}


class ExpirationReleaseTest(unittest.TestCase):
    def setUp(self):
        self.sent = []

    def release(self, expirations, slots) -> ExpirationRelease:
        return ExpirationRelease(expirations, slots, lambda e, options: self.sent.append((e, options)))

    def test_a_later_expiration_done_first_waits_for_the_earlier_ones(self):
        release = self.release(["A", "B", "C"], [0, 0, 1, 2])
        release.done(3, option("C", 3))  # C is complete, A and B are not
        release.done(2, option("B", 2))
        self.assertEqual(self.sent, [])
        release.done(1, option("A", 1))
        self.assertEqual(self.sent, [])
        release.done(0, option("A", 0))  # A completes: A, then the waiting B and C, in order
        self.assertEqual(
            self.sent, [("A", [option("A", 0), option("A", 1)]), ("B", [option("B", 2)]), ("C", [option("C", 3)])]
        )

    def test_options_keep_request_order_whatever_order_they_finish_in(self):
        release = self.release(["A"], [0, 0, 0])
        for n in (2, 0, 1):
            release.done(n, option("A", n))
        self.assertEqual(self.sent, [("A", [option("A", 0), option("A", 1), option("A", 2)])])

    def test_an_expiration_without_options_is_sent_empty_in_its_turn(self):
        release = self.release(["A", "B", "C"], [0, 2])
        self.assertEqual(self.sent, [])  # A first
        release.done(0, option("A", 0))
        self.assertEqual([e for e, _ in self.sent], ["A", "B"])
        self.assertEqual(self.sent[1], ("B", []))
        release.done(1, option("C", 1))
        self.assertEqual([e for e, _ in self.sent], ["A", "B", "C"])

    def test_leading_empty_expirations_go_at_once_and_a_repeat_is_ignored(self):
        release = self.release(["A", "B"], [1])
        self.assertEqual(self.sent, [("A", [])])
        release.done(0, option("B", 0))
        release.done(0, option("B", 0))
        self.assertEqual(self.sent, [("A", []), ("B", [option("B", 0)])])


class StreamedChainE2ETest(E2ECase):
    """The agent as a user runs it; the fake relay records the partial frames in arrival order."""

    wait_for_tws = True

    def test_one_frame_per_expiration_nearest_first_each_complete_before_the_response(self):
        relay = self.stack.relay
        params = {"ticker": "SPY", "max_days": 20, "strikes_around": 3, "partial": True}
        response = relay.request("fetch-chain", params, id="streamed", timeout_s=90)
        self.assertTrue(response["ok"], response)
        data = response["data"]
        partials = relay.partials["streamed"]
        self.assertGreater(len(data["expirations"]), 2, data["expirations"])
        self.assertEqual([p["expiration"] for p in partials], data["expirations"])
        for frame in partials:
            self.assertEqual(
                frame["options"], [o for o in data["options"] if o["expiration"] == frame["expiration"]], frame
            )
            self.assertTrue(frame["options"], frame["expiration"])
        self.assertEqual([o for p in partials for o in p["options"]], data["options"])
        kinds = [f.get("type") for f in relay.frames if isinstance(f, dict) and f.get("id") == "streamed"]
        self.assertEqual(kinds.index("response"), len(kinds) - 1, kinds)  # every partial came before it

    def test_no_partial_frames_unless_asked(self):
        relay = self.stack.relay
        for name, extra in (("plain", {}), ("asked-false", {"partial": False})):
            params = dict({"ticker": "AAPL", "max_days": 20, "strikes_around": 2}, **extra)
            response = relay.request("fetch-chain", params, id=name, timeout_s=90)
            self.assertTrue(response["ok"], response)
            self.assertTrue(response["data"]["options"])
            self.assertNotIn(name, relay.partials)

    def test_partial_must_be_a_boolean(self):
        response = self.stack.relay.request("fetch-chain", {"ticker": "SPY", "partial": 1}, timeout_s=30)
        self.assertFalse(response["ok"])
        self.assertEqual(response["error"]["code"], "INVALID_REQUEST")


if __name__ == "__main__":
    unittest.main()
