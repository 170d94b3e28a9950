"""Subscriptions end to end (DESIGN.md 4, v1.1 subscribe / unsubscribe / update): the agent as a
process against tests.fake_tws and tests.fake_relay, both in-process so the test sees the fake's
lines and the relay's frames as they happen."""

from __future__ import annotations

import textwrap
import time
import unittest

from tests.agent_process import DEFAULT_KEY, PYTHON, AgentProcess, AgentStack
from tools.soak import option_contracts, wait_status

WAIT_S = 60.0
INTERVAL_MS = 250
LIMIT = 20  # WARM_LINES of these agents
AGENT_ENV = {"WARM_LINES": str(LIMIT), "IB_MAX_MKT_LINES": "40"}
KEYS = ("ticker", "expiration", "strike", "right")
RESTORED_DATA_LOST = "Connectivity between IB and Trader Workstation has been restored - data lost."


def contract_key(option: dict) -> tuple:
    return tuple(option[k] for k in KEYS)


class SubscriptionCase(unittest.TestCase):
    tws_options: dict = {}
    stack: AgentStack

    @classmethod
    def setUpClass(cls):
        cls.stack = AgentStack(tws_options=cls.tws_options, agent_env=AGENT_ENV)
        cls.stack.start()
        cls.relay, cls.tws = cls.stack.relay, cls.stack.tws
        cls.stack.wait_tws()

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def tearDown(self):
        self.assertEqual(self.relay.violations, [])
        self.assertIsNone(self.stack.agent.process.poll(), "the agent exited")
        self.assertNotIn(DEFAULT_KEY, self.stack.agent.everything())

    def subscribe(self, count: int, ticker: str = "MSFT", **params) -> dict:
        contracts = option_contracts(self.tws.market, count, tickers=(ticker,))
        response = self.relay.request(
            "subscribe", dict({"contracts": contracts, "interval_ms": INTERVAL_MS}, **params), timeout_s=WAIT_S
        )
        self.assertTrue(response["ok"], response)
        data = response["data"]
        self.assertEqual([contract_key(o) for o in data["options"]], [contract_key(c) for c in contracts])
        self.addCleanup(self.relay.request, "unsubscribe", {"subscription": data["subscription"]})
        return data

    def unsubscribe(self, sub_id: str) -> dict:
        response = self.relay.request("unsubscribe", {"subscription": sub_id})
        self.assertTrue(response["ok"], response)
        return response["data"]

    def updates(self, sub_id: str) -> list:
        with self.relay._changed:
            return list(self.relay.updates[sub_id])

    def wait_updates(self, sub_id: str, count: int) -> list:
        self.relay.wait_until(lambda: len(self.relay.updates[sub_id]) >= count, WAIT_S, f"{count} updates")
        return self.updates(sub_id)

    def wait_lines(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.tws.stats()["lines_in_use"] != count:
            if time.monotonic() > deadline:
                self.fail(f"lines in use at the fake TWS: {self.tws.stats()['lines_in_use']}, expected {count}")
            time.sleep(0.05)


class Streaming(SubscriptionCase):
    tws_options = {"tick_delay_ms": (1, 5)}

    def test_first_picture_then_updates_of_what_changed_only_then_unsubscribe_frees_every_line(self):
        data = self.subscribe(6)
        sub_id = data["subscription"]
        self.assertEqual(set(data["underlyings"]), {"MSFT"})
        self.assertTrue(all(o["error"] is None for o in data["options"]))
        self.wait_lines(7)  # six options and their underlying, pinned
        asked = self.tws.stats()["requests_by_type"].get("reqMktData")
        updates = self.wait_updates(sub_id, 5)
        self.assertEqual([u["seq"] for u in updates], list(range(1, len(updates) + 1)))
        known = {contract_key(o): o for o in data["options"]}
        quotes = dict(data["underlyings"])
        for update in updates:  # each holds only what differs from what the cloud knew, whole
            self.assertTrue(update["options"] or update["underlyings"])
            for option in update["options"]:
                self.assertIn(contract_key(option), known)
                self.assertNotEqual(option, known[contract_key(option)])
                self.assertEqual(set(option), set(known[contract_key(option)]))
                known[contract_key(option)] = option
            for ticker, quote in update["underlyings"].items():
                self.assertNotEqual(quote, quotes[ticker])
                quotes[ticker] = quote
        self.assertEqual(self.tws.stats()["requests_by_type"].get("reqMktData"), asked, "updates cost no message")
        self.assertEqual(self.unsubscribe(sub_id), {"subscription": sub_id, "ended": True})
        self.wait_lines(0)
        cancels = self.tws.stats()["requests_by_type"].get("cancelMktData", 0)
        self.assertGreaterEqual(cancels, 7)
        self.assertEqual(self.unsubscribe(sub_id), {"subscription": sub_id, "ended": False})

    def test_all_subscriptions_together_hold_at_most_warm_lines(self):
        contracts = option_contracts(self.tws.market, LIMIT + 1, tickers=("AAPL",))
        response = self.relay.request("subscribe", {"contracts": contracts}, timeout_s=WAIT_S)
        self.assertEqual(response["error"]["code"], "INVALID_REQUEST")
        self.assertIn(f"WARM_LINES={LIMIT}", response["error"]["message"])
        first = self.subscribe(LIMIT // 2)  # and their underlying: LIMIT // 2 + 1 lines
        refused = self.relay.request(
            "subscribe", {"contracts": option_contracts(self.tws.market, LIMIT // 2, tickers=("AAPL",))}
        )
        self.assertEqual(refused["error"]["code"], "INVALID_REQUEST")
        self.assertIn(f"WARM_LINES={LIMIT}", refused["error"]["message"])
        self.wait_lines(LIMIT // 2 + 1)  # the refused ones took none
        self.unsubscribe(first["subscription"])
        self.wait_lines(0)

    def test_bad_params_name_the_field(self):
        for params, field in (
            ({}, "params.contracts"),
            ({"tickers": ["MSFT"], "interval_ms": 100}, "params.interval_ms"),
            ({"tickers": ["MSFT"], "interval_ms": 60001}, "params.interval_ms"),
        ):
            response = self.relay.request("subscribe", params)
            self.assertEqual(response["error"]["code"], "INVALID_REQUEST", params)
            self.assertTrue(response["error"]["message"].startswith(field), response)

    def test_hello_lists_it_and_after_a_relay_drop_the_next_update_is_full(self):
        data = self.subscribe(4, tickers=["AAPL"])
        sub_id = data["subscription"]
        self.assertEqual(set(data["underlyings"]), {"MSFT", "AAPL"})
        self.wait_updates(sub_id, 2)
        connections = self.relay.connections
        self.assertTrue(self.relay.drop())
        hello = self.relay.wait_hello(WAIT_S, connections=connections + 1)
        self.assertIn(sub_id, hello["subscriptions"])

        def updates_on_the_new_connection():
            frames = zip(list(self.relay.frames), list(self.relay.frame_connections))
            return [f for f, n in frames if n == connections + 1 and f.get("type") == "update"]

        self.relay.wait_until(updates_on_the_new_connection, WAIT_S, "an update on the new connection")
        first = updates_on_the_new_connection()[0]
        self.assertEqual([contract_key(o) for o in first["options"]], [contract_key(o) for o in data["options"]])
        self.assertEqual(set(first["underlyings"]), {"MSFT", "AAPL"})
        self.unsubscribe(sub_id)
        self.relay.drop()
        hello = self.relay.wait_hello(WAIT_S, connections=connections + 2)
        self.assertEqual(hello["subscriptions"], [])

    def test_it_keeps_updating_across_a_tws_restart_and_a_1101(self):
        data = self.subscribe(5)
        sub_id = data["subscription"]
        self.wait_lines(6)
        self.tws.restart(1.0)
        wait_status(self.relay, lambda s: s["connected"], WAIT_S, "reconnected to TWS")
        self.wait_lines(6)  # asked again on the new connection
        seen = len(self.wait_updates(sub_id, 1))
        self.wait_updates(sub_id, seen + 3)
        self.tws.broadcast_error(1101, RESTORED_DATA_LOST)
        asked = self.tws.stats()["requests_by_type"]["reqMktData"]
        self.relay.wait_until(
            lambda: self.tws.stats()["requests_by_type"]["reqMktData"] >= asked + 6, WAIT_S, "streams asked again"
        )
        self.wait_lines(6)  # each lost stream cancelled before it was asked again
        seen = len(self.updates(sub_id))
        updates = self.wait_updates(sub_id, seen + 3)
        self.assertEqual([u["seq"] for u in updates], list(range(1, len(updates) + 1)))


class Quiet(SubscriptionCase):
    """Market closed: frozen values once, then nothing moves."""

    tws_options = {"market_closed": True, "tick_delay_ms": (1, 5)}

    def test_no_update_while_nothing_changes(self):
        data = self.subscribe(4)
        self.assertTrue(all(o["market_data_type"] == "frozen" for o in data["options"]))
        # The picture is taken once each contract's fields are in (a stock's: bid, ask, last): the
        # rest of its first burst (close, volume) may still follow, in at most one update.
        time.sleep(4 * INTERVAL_MS / 1000)
        settled = self.updates(data["subscription"])
        self.assertLessEqual(len(settled), 1)
        time.sleep(8 * INTERVAL_MS / 1000)  # eight intervals: room for eight updates, if anything changed
        self.assertEqual(self.updates(data["subscription"]), settled)


# The agent with its relay grace shortened (a class attribute), so "ended after the relay has been
# down for 60 s" takes a second or two.
SHORT_GRACE_AGENT = textwrap.dedent("""
    import sys
    import ib_data_agent
    from agent.ib.subscriptions import Subscriptions
    Subscriptions.relay_grace_s = 1.5
    sys.exit(ib_data_agent.main(sys.argv[1:]))
""")


class RelayGone(unittest.TestCase):
    def test_subscriptions_end_when_the_relay_has_been_down_for_the_grace_period(self):
        stack = AgentStack(agent=False, tws_options={"tick_delay_ms": (1, 5)})
        stack.start()
        self.addCleanup(stack.stop)
        agent = AgentProcess(DEFAULT_KEY, stack.relay.url, stack.ib_port, AGENT_ENV, command=[PYTHON, "-u", "-c"])
        config = agent.data_dir / "config.env"
        config.write_text("")
        agent.command += [SHORT_GRACE_AGENT, "--config", str(config)]
        self.addCleanup(agent.cleanup)
        self.addCleanup(agent.stop)
        agent.start()
        stack.relay.wait_hello(WAIT_S)
        stack.wait_tws()
        contracts = option_contracts(stack.tws.market, 3, tickers=("MSFT",))
        response = stack.relay.request("subscribe", {"contracts": contracts, "interval_ms": INTERVAL_MS})
        self.assertTrue(response["ok"], response)
        sub_id = response["data"]["subscription"]
        port = stack.relay.port
        stack.relay.stop()
        deadline = time.monotonic() + WAIT_S
        while stack.tws.stats()["lines_in_use"] != 0:
            self.assertLess(time.monotonic(), deadline, "the subscription's lines were never cancelled")
            time.sleep(0.1)
        agent.wait_for_output("subscription.* ended: the relay has been down", WAIT_S)
        from tests.fake_relay import FakeRelay

        stack.relay = FakeRelay(port=port, key=DEFAULT_KEY)
        stack.relay.start()
        hello = stack.relay.wait_hello(WAIT_S)
        self.assertEqual(hello["subscriptions"], [])
        response = stack.relay.request("unsubscribe", {"subscription": sub_id})
        self.assertEqual(response["data"], {"subscription": sub_id, "ended": False})


class AgentStops(unittest.TestCase):
    def test_stopping_the_agent_cancels_every_subscribed_line_at_tws(self):
        with AgentStack(tws_options={"tick_delay_ms": (1, 5)}, agent_env=AGENT_ENV) as stack:
            stack.wait_tws()
            contracts = option_contracts(stack.tws.market, 3, tickers=("MSFT",))
            response = stack.relay.request("subscribe", {"contracts": contracts})
            self.assertTrue(response["ok"], response)
            cancels = stack.tws.stats()["requests_by_type"].get("cancelMktData", 0)
            self.assertEqual(stack.agent.stop(), 0)
            # closing the socket would free them too; the agent says so to TWS first, line by line
            self.assertEqual(stack.tws.stats()["requests_by_type"].get("cancelMktData", 0), cancels + 4)


if __name__ == "__main__":
    unittest.main()
