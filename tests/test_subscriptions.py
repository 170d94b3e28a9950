"""Subscriptions (agent.ib.subscriptions) and the pinned lines under them (agent.ib.lines), on the
real MarketData driven by the stand-in connection of test_ib_lines: the diff, the throttle, seq,
full updates after a relay reconnect, the relay grace, and how pinned lines share the pool with
the warm cache and bulk requests."""

from __future__ import annotations

import threading
import time
import unittest
from typing import List, Optional

from agent.errors import INVALID_REQUEST, AgentError
from agent.ib.subscriptions import Subscription, Subscriptions
from agent.ib.ticks import Instrument
from tests.test_ib_lines import WAIT_S, LinesTestCase, StubTws, option

STOCK = Instrument("AAPL")
INTERVAL_MS = 250


class FakeScanner:
    """The one Scanner method subscriptions use, answering with fixed instruments."""

    def __init__(self, market, wanted: list, underlyings: dict):
        self.market, self.wanted, self.underlyings = market, wanted, underlyings

    def price_instruments(self, contracts, tickers):
        return self.wanted, self.underlyings


class FakeLink:
    """RelayLink's push and link listener; `up` says whether a push goes out."""

    def __init__(self):
        self.up = True
        self.pushed: List[tuple] = []  # (monotonic time, frame) of frames that went out
        self.refused: List[dict] = []
        self.listeners: list = []
        self._lock = threading.Condition()

    def push(self, frame: dict) -> bool:
        with self._lock:
            (self.pushed.append((time.monotonic(), frame)) if self.up else self.refused.append(frame))
            self._lock.notify_all()
            return self.up

    def add_link_listener(self, fn) -> None:
        self.listeners.append(fn)

    def link(self, up: bool) -> None:
        for fn in self.listeners:
            fn(up)

    def frames(self) -> List[dict]:
        with self._lock:
            return [frame for _, frame in self.pushed]

    def wait(self, predicate, what: str):
        deadline = time.monotonic() + WAIT_S
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._lock.wait(min(left, 0.05))


class PictureTest(unittest.TestCase):
    """Subscription alone: what an update holds."""

    def setUp(self):
        self.a, self.b = option(180), option(185)
        self.sub = Subscription("sub-1", [self.a, self.b, self.a], {"AAPL": STOCK}, 1.0)
        self.first = [
            self.result(self.a, 1.0),
            self.result(self.b, 2.0),
            {"ticker": "AAPL", "bid": 180.0, "error": None},
        ]
        options, quotes = self.sub.current(self.first)
        self.sub.sent(options, quotes, 0)
        self.picture = self.sub.picture(options)

    @staticmethod
    def result(instrument: Instrument, bid: float) -> dict:
        return {"ticker": "AAPL", "strike": instrument.strike, "bid": bid, "error": None}

    def test_the_picture_has_one_option_per_contract_asked_and_quotes_without_their_error(self):
        self.assertEqual([o["strike"] for o in self.picture], [180.0, 185.0, 180.0])
        self.assertEqual(self.sub.current(self.first)[1], {"AAPL": {"ticker": "AAPL", "bid": 180.0}})

    def test_an_update_holds_only_what_changed_whole_and_each_contract_once(self):
        frame, options, quotes = self.sub.update([self.result(self.a, 1.1), self.first[1], self.first[2]], False)
        self.assertEqual(frame["options"], [self.result(self.a, 1.1)])
        self.assertEqual((frame["underlyings"], frame["seq"]), ({}, 1))
        self.sub.sent(options, quotes, frame["seq"])
        frame, _, _ = self.sub.update(
            [self.result(self.a, 1.1), self.first[1], {"ticker": "AAPL", "bid": 181.0}], False
        )
        self.assertEqual(
            (frame["options"], frame["underlyings"], frame["seq"]), ([], {"AAPL": {"ticker": "AAPL", "bid": 181.0}}, 2)
        )

    def test_nothing_changed_is_no_update_unless_a_full_one_is_owed(self):
        self.assertIsNone(self.sub.update(self.first, False))
        self.assertIsNone(self.sub.update([None, None, None], False))  # no stream now: what was sent stands
        frame, _, _ = self.sub.update([None, None, None], True)
        self.assertEqual(frame["options"], self.picture)
        self.assertEqual(frame["underlyings"], {"AAPL": {"ticker": "AAPL", "bid": 180.0}})

    def test_nothing_is_remembered_until_sent(self):
        changed = [self.result(self.a, 1.1), self.first[1], self.first[2]]
        self.sub.update(changed, False)
        frame, _, _ = self.sub.update(changed, False)
        self.assertEqual((frame["seq"], len(frame["options"])), (1, 1))


class RegistryCase(LinesTestCase):
    """Subscriptions over the real MarketData; AAPL 180/185 calls and AAPL stream until cancelled."""

    def start(self, **config) -> None:
        settings = dict(ib_max_mkt_lines=6, warm_lines=3, warm_seconds=60)
        settings.update(config)
        self.market, self.conn, self.tws = self.make(StubTws(), **settings)
        self.wanted = [option(180), option(185)]
        self.registry = Subscriptions(FakeScanner(self.market, self.wanted, {"AAPL": STOCK}), self.conn)
        self.link = FakeLink()
        self.registry.attach(self.link)
        self.link.link(True)
        self.registry.start()
        self.addCleanup(self.registry.close)

    def subscribe(self, interval_ms: int = INTERVAL_MS) -> dict:
        data = self.registry.subscribe([{}], [], interval_ms)
        self.registry.activate(data["subscription"])
        return data

    def stream_of(self, strike: Optional[float]) -> int:
        """The live req id of an option (None: the stock)."""
        key = ("AAPL", strike, "C") if strike is not None else "AAPL"
        return max(req_id for req_id, held in self.tws.open.items() if held == key)

    def tick_bid(self, strike: float, bid: float) -> None:
        req_id = self.stream_of(strike)
        self.conn.event(req_id, "tickPrice", (req_id, 1, bid, None))


class RegistryTest(RegistryCase):
    def test_updates_are_diffs_at_most_one_per_interval_with_seq_from_one_and_cost_no_message(self):
        self.start()
        data = self.subscribe()
        self.assertEqual([o["bid"] for o in data["options"]], [1.8, 1.85])
        self.assertEqual(len(self.tws.open), 3)
        sent_before = len(self.conn.sent)
        started = time.monotonic()
        bid = 2.0
        while len(self.link.frames()) < 4:
            self.assertLess(time.monotonic() - started, WAIT_S)
            bid += 0.01
            self.tick_bid(185.0, round(bid, 2))
            time.sleep(0.02)
        frames = self.link.frames()
        self.assertEqual([f["seq"] for f in frames], list(range(1, len(frames) + 1)))
        for frame in frames:
            self.assertEqual([o["strike"] for o in frame["options"]], [185.0])
            self.assertEqual(frame["underlyings"], {})
        times = [t for t, _ in self.link.pushed]
        self.assertTrue(all(b - a >= INTERVAL_MS / 1000 - 0.01 for a, b in zip(times, times[1:])), times)
        self.assertEqual(len(self.conn.sent), sent_before)  # updates come from the books only
        count = len(frames)
        time.sleep(4 * INTERVAL_MS / 1000)
        self.assertEqual(len(self.link.frames()), count, "no update while nothing changes")

    def test_a_frame_that_did_not_go_out_uses_no_seq_and_a_reconnect_owes_a_full_update(self):
        self.start()
        self.subscribe()
        self.tick_bid(180.0, 3.0)
        self.link.wait(lambda: self.link.frames(), "the first update")
        self.link.up = False  # the link broke; its listener has not said so yet
        self.tick_bid(180.0, 3.1)
        self.link.wait(lambda: len(self.link.refused) >= 2, "two refused pushes")
        self.assertEqual({f["seq"] for f in self.link.refused}, {2})
        self.link.link(False)
        self.link.up = True
        self.link.link(True)
        self.link.wait(lambda: len(self.link.frames()) == 2, "the update after the reconnect")
        full = self.link.frames()[1]
        self.assertEqual(full["seq"], 2)
        self.assertEqual([(o["strike"], o["bid"]) for o in full["options"]], [(180.0, 3.1), (185.0, 1.85)])
        self.assertEqual(set(full["underlyings"]), {"AAPL"})

    def test_hello_lists_live_subscriptions_and_unsubscribe_cancels_their_lines(self):
        self.start()
        first, second = self.subscribe(), self.subscribe()
        self.assertEqual(
            self.registry.hello_fields(), {"subscriptions": [first["subscription"], second["subscription"]]}
        )
        self.assertEqual(len(self.tws.open), 3)  # shared by both
        self.assertTrue(self.registry.unsubscribe(first["subscription"]))
        self.assertEqual((len(self.tws.open), self.conn.count("cancelMktData")), (3, 0))
        self.assertTrue(self.registry.unsubscribe(second["subscription"]))
        self.assertEqual((self.tws.open, self.conn.count("cancelMktData")), ({}, 3))
        self.assertFalse(self.registry.unsubscribe(second["subscription"]))
        self.assertEqual(self.registry.hello_fields(), {"subscriptions": []})
        self.assertEqual(self.market.stats()["lines_in_use"], 0)

    def test_a_relay_down_for_the_grace_period_ends_every_subscription(self):
        self.start()
        self.registry.relay_grace_s = 0.3
        self.subscribe()
        self.link.link(False)
        self.conn.wait_for(lambda: self.conn.count("cancelMktData") == 3, "every line cancelled")
        self.assertEqual(self.registry.hello_fields(), {"subscriptions": []})

    def test_a_relay_back_within_the_grace_period_keeps_them(self):
        self.start()
        self.registry.relay_grace_s = 0.3
        data = self.subscribe()
        self.link.link(False)
        self.link.link(True)
        time.sleep(0.6)
        self.assertEqual(self.registry.hello_fields(), {"subscriptions": [data["subscription"]]})
        self.assertEqual(self.conn.count("cancelMktData"), 0)

    def test_after_a_1101_the_pinned_streams_are_cancelled_and_asked_again_and_updates_go_on(self):
        self.start()
        self.subscribe()
        lost = sorted(self.tws.open)
        self.conn.data_lost()
        self.conn.wait_for(lambda: self.conn.count("reqMktData") == 6, "the three streams asked again")
        self.assertEqual(sorted(self.conn.req_ids("cancelMktData")), lost)
        self.tick_bid(185.0, 4.0)
        self.link.wait(lambda: any(o["bid"] == 4.0 for f in self.link.frames() for o in f["options"]), "an update")

    def test_stop_cancels_every_line(self):
        self.start()
        self.subscribe()
        self.registry.close()
        self.assertEqual((self.tws.open, self.conn.count("cancelMktData")), ({}, 3))


class PinnedLinesTest(LinesTestCase):
    """MarketData.pin: how subscription lines share the pool with the warm cache and bulk requests."""

    def test_pins_together_hold_at_most_warm_lines_and_the_same_contract_counts_once(self):
        market, _, _ = self.make(ib_max_mkt_lines=6, warm_lines=3, warm_seconds=60)
        market.pin([option(180), option(185)])
        market.pin([option(185), option(190)])
        with self.assertRaises(AgentError) as refused:
            market.pin([option(195)])
        self.assertEqual(refused.exception.code, INVALID_REQUEST)
        self.assertIn("WARM_LINES=3", refused.exception.message)
        self.assertEqual(market.stats()["pinned_lines"], 3)

    def test_the_warm_cache_shrinks_to_make_room_for_pinned_lines(self):
        market, conn, _ = self.make(ib_max_mkt_lines=6, warm_lines=3, warm_seconds=60)
        market.fetch([option(s) for s in (100, 105, 110)])
        self.assertEqual(market.stats()["warm_lines"], 3)
        market.pin([option(180), option(185)])
        self.assertEqual((market.stats()["warm_lines"], conn.count("cancelMktData")), (1, 2))
        market.fetch([option(180), option(185)])
        self.assertEqual(market.stats()["lines_in_use"], 3)

    def test_a_pinned_stream_already_warm_is_kept_and_no_request_takes_it_back(self):
        market, conn, tws = self.make(ib_max_mkt_lines=4, warm_lines=2, warm_seconds=60)
        market.fetch([option(180)])
        market.pin([option(180), option(185)])
        market.fetch([option(180), option(185)])
        pinned = sorted(tws.open)
        self.assertEqual(conn.count("reqMktData"), 2)  # the warm one was joined, not asked again
        results = market.fetch([option(s) for s in range(100, 150, 5)])  # ten contracts through two lines
        self.assertTrue(all(r["complete"] for r in results))
        self.assertLessEqual(tws.max_open, 4)
        self.assertFalse(set(pinned) & set(conn.req_ids("cancelMktData")))
        self.assertEqual(
            sorted(k for r, k in tws.open.items() if r in pinned), [("AAPL", 180.0, "C"), ("AAPL", 185.0, "C")]
        )

    def test_unpin_cancels_a_stream_nobody_else_holds(self):
        market, conn, tws = self.make(ib_max_mkt_lines=4, warm_lines=2, warm_seconds=60)
        market.pin([option(180)])
        market.pin([option(180)])
        market.fetch([option(180)])
        market.unpin([option(180)])
        self.assertEqual(conn.count("cancelMktData"), 0)
        market.unpin([option(180)])
        self.assertEqual((conn.count("cancelMktData"), tws.open, market.stats()["lines_in_use"]), (1, {}, 0))


if __name__ == "__main__":
    unittest.main()
