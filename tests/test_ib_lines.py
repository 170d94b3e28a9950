"""The line pool, the bulk sliding window, shared and warm subscriptions (agent.ib.lines), driven by a
stand-in connection that replays recorded tick sequences (tests/recorded/ticks_*.json)."""

from __future__ import annotations

import itertools
import threading
import time
import unittest
from typing import Callable, Dict, List, Optional, Tuple

from agent.config import Config
from agent.errors import (
    CANCELLED,
    IB_NOT_CONNECTED,
    MARKET_DATA_NOT_SUBSCRIBED,
    NO_SECURITY_DEFINITION,
    AgentError,
    IbNotConnected,
)
from agent.ib.lines import MarketData
from agent.ib.requests import CancelToken
from agent.ib.ticks import Instrument
from tests.test_ib_ticks import recorded_events

WAIT_S = 10.0
STALE_BID = 9.99  # a tick a warm stream got before a 1101: no answer may carry it after


def make_config(**fields) -> Config:
    values = dict(ib_max_mkt_lines=4, warm_lines=0, warm_seconds=0, option_timeout_s=5.0, request_timeout_s=5.0)
    values.update(fields)
    return Config(key="test-key-123456", **values)


def option(strike: float, right: str = "C", ticker: str = "AAPL") -> Instrument:
    return Instrument(ticker, "OPT", "20300118", float(strike), right, ticker, "SMART", 100)


class StubTws:
    """Plays TWS for the stand-in connection: how each reqMktData is answered.

    `replies` maps (symbol, strike, right) to a recorded sequence name, "silent" (the test feeds
    it later) or ("error", code, text); anything else gets the live recording, with the bid set to
    strike / 100 so results can be told apart; ("notice", code, recording) sends that notice and
    streams the recording. `tws_lines` is TWS's own limit (error 101 beyond). `delayed_only`: 354
    unless reqMarketDataType(3/4) is in effect, then the delayed recording with marketDataType saying
    the type in effect; `not_subscribed`: the same, for these tickers only. `asked` records
    (symbol, strike, right, data type, generic ticks) per reqMktData."""

    def __init__(
        self,
        replies: Optional[dict] = None,
        tws_lines: int = 1000,
        delayed_only: bool = False,
        not_subscribed: tuple = (),
    ):
        self.replies = dict(replies or {})
        self.tws_lines = tws_lines
        self.delayed_only = delayed_only
        self.not_subscribed = set(not_subscribed)
        self.data_type = 2  # what agent.ib.connection asks on connecting in auto
        self.open: Dict[int, tuple] = {}
        self.max_open = 0
        self.asked: List[tuple] = []

    def __call__(self, conn: "StubConnection", name: str, args: tuple) -> None:
        if name == "reqMarketDataType":
            self.data_type = args[0]
        elif name == "cancelMktData":
            self.open.pop(args[0], None)
        elif name == "reqMktData":
            self.asked.append((args[1].symbol, args[1].strike, args[1].right, self.data_type, args[2]))
            self._market_data(conn, args[0], args[1])

    def _market_data(self, conn: "StubConnection", req_id: int, contract) -> None:
        if len(self.open) >= self.tws_lines:
            conn.error(req_id, 101, "Max number of tickers has been reached")
            return
        key = (contract.symbol, contract.strike, contract.right) if contract.secType == "OPT" else contract.symbol
        self.open[req_id] = key
        self.max_open = max(self.max_open, len(self.open))
        reply = self.replies.get(key)
        delayed_only = self.delayed_only or contract.symbol in self.not_subscribed
        if delayed_only and self.data_type not in (3, 4):
            self.open.pop(req_id)
            conn.error(req_id, 354, "Requested market data is not subscribed.")
        elif delayed_only:
            conn.feed(req_id, "option_delayed" if contract.secType == "OPT" else "stock_live", data_type=self.data_type)
        elif reply == "silent":
            return
        elif isinstance(reply, tuple) and reply[0] == "notice":
            conn.error(req_id, reply[1], "Part of requested market data is not subscribed.")
            conn.feed(req_id, reply[2])
        elif isinstance(reply, tuple):
            self.open.pop(req_id)
            conn.error(req_id, reply[1], reply[2])
        elif reply is not None:
            conn.feed(req_id, reply)
        elif contract.secType == "OPT":
            conn.feed(req_id, "option_live", bid=contract.strike / 100)
        else:
            conn.feed(req_id, "stock_live")


class StubConnection:
    """The IBConnection interface the scanner uses, in memory: records every send, lets the test
    (or a StubTws) deliver callbacks to registered handlers, and can drop like TWS does."""

    def __init__(self, tws: Optional[Callable] = None):
        self.tws = tws
        self.ready = True
        self.sent: List[Tuple[str, tuple]] = []
        self.handlers: Dict[int, object] = {}
        self.listeners: Dict[str, list] = {}
        self.answers: Dict[str, Callable] = {}  # call(): method -> fn(args) -> rows
        self._ids = itertools.count(1_000_000_000)
        self._lock = threading.Condition()

    # the IBConnection interface
    def next_req_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def register(self, req_id, handler) -> None:
        with self._lock:
            self.handlers[req_id] = handler

    def unregister(self, req_id) -> None:
        with self._lock:
            self.handlers.pop(req_id, None)

    def add_listener(self, name, fn) -> None:
        self.listeners.setdefault(name, []).append(fn)

    def remove_listener(self, name, fn) -> None:
        self.listeners[name] = [f for f in self.listeners.get(name, []) if f is not fn]

    def send(self, name: str, *args) -> None:
        if not self.ready:
            raise IbNotConnected("Not connected to TWS")
        with self._lock:
            self.sent.append((name, args))
            self._lock.notify_all()
        if self.tws is not None:
            self.tws(self, name, args)

    def call(self, name: str, req_id: int, *args, rows=(), end="", timeout=None):
        self.send(name, req_id, *args)
        return self.answers[name](args)

    # playing TWS
    def feed(self, req_id: int, recording: str, bid: Optional[float] = None, data_type: Optional[int] = None) -> None:
        for callback, args in recorded_events(recording, req_id):
            if bid is not None and callback == "tickPrice" and args[1] == 1:
                args = (req_id, 1, bid, args[3])
            if data_type is not None and callback == "marketDataType":
                args = (req_id, data_type)
            self.event(req_id, callback, args)

    def event(self, req_id: int, callback: str, args: tuple) -> None:
        handler = self.handlers.get(req_id)
        if handler is not None:
            handler.on_event(callback, args)

    def error(self, req_id: int, code: int, text: str) -> None:
        handler = self.handlers.get(req_id)
        if handler is not None:
            handler.on_error(code, text)

    def ib_link(self, up: bool, code: int) -> None:
        """What agent.ib.connection does on TWS's 1100 / 1101 / 1102: the "ib_link" listeners are called."""
        for fn in self.listeners.get("ib_link", []):
            fn(up, code, "Connectivity between IB and Trader Workstation has been lost.")

    def data_lost(self) -> None:
        """What agent.ib.connection does on TWS's 1101: every handler gets "resubscribe" (in registration
        order), then the "resubscribe" listeners are called."""
        with self._lock:
            handlers = list({id(h): h for h in self.handlers.values()}.values())
        for handler in handlers:
            handler.on_event("resubscribe", ())
        for fn in self.listeners.get("resubscribe", []):
            fn()

    def drop(self) -> None:
        self.ready = False
        with self._lock:
            handlers = list(self.handlers.values())
        for handler in handlers:
            handler.on_disconnect()
        for fn in self.listeners.get("disconnected", []):
            fn()

    # looking at what was sent
    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for n, _ in self.sent if n == name)

    def req_ids(self, name: str = "reqMktData") -> List[int]:
        with self._lock:
            return [args[0] for n, args in self.sent if n == name]

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._lock.wait(min(left, 0.05))


class Background:
    """Runs a fetch on its own thread (as the worker pool does) and hands back its outcome."""

    def __init__(self, fn: Callable, *args, **kwargs):
        self.result = self.error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self.result = fn(*args, **kwargs)
        except Exception as exc:  # handed to the test thread
            self.error = exc

    def join(self, timeout: float = WAIT_S):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("fetch did not finish")
        if self.error is not None:
            raise self.error
        return self.result


class LinesTestCase(unittest.TestCase):
    def make(self, tws: Optional[StubTws] = None, **config) -> Tuple[MarketData, StubConnection, StubTws]:
        tws = tws or StubTws()
        conn = StubConnection(tws)
        market = MarketData(conn, make_config(**config))
        self.addCleanup(market.close)
        return market, conn, tws


class SlidingWindowTest(LinesTestCase):
    def test_results_in_order_within_the_pool_each_line_freed_after_its_data(self):
        market, conn, tws = self.make(ib_max_mkt_lines=3)
        strikes = list(range(150, 200, 5))
        progress: List[Tuple[int, int]] = []
        results = market.fetch([option(s) for s in strikes], progress=lambda d, t: progress.append((d, t)))
        self.assertEqual([r["strike"] for r in results], [float(s) for s in strikes])
        self.assertEqual([r["bid"] for r in results], [s / 100 for s in strikes])
        self.assertTrue(all(r["complete"] and r["error"] is None for r in results))
        self.assertEqual(conn.count("reqMktData"), len(strikes))
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids("reqMktData")))
        self.assertLessEqual(tws.max_open, 3)
        self.assertEqual(market.stats()["lines_in_use"], 0)
        self.assertEqual(progress[-1], (len(strikes), len(strikes)))
        self.assertLessEqual(len(progress), len(strikes))
        self.assertEqual([d for d, _ in progress], sorted(set(d for d, _ in progress)))

    def test_option_contract_is_fully_specified(self):
        market, conn, _ = self.make()
        market.fetch([option(190, "P")])
        name, (req_id, contract, generic, snapshot, regulatory, options) = next(
            s for s in conn.sent if s[0] == "reqMktData"
        )
        self.assertEqual(
            (
                contract.symbol,
                contract.secType,
                contract.lastTradeDateOrContractMonth,
                contract.strike,
                contract.right,
                contract.exchange,
                contract.currency,
                contract.multiplier,
                contract.tradingClass,
            ),
            ("AAPL", "OPT", "20300118", 190.0, "P", "SMART", "USD", "100", "AAPL"),
        )
        self.assertEqual((generic, snapshot), ("100,101", False))  # no 106: IV comes from the model

    def test_deadline_returns_what_arrived_and_frees_the_line(self):
        market, conn, _ = self.make(StubTws({("AAPL", 200.0, "C"): "option_no_model"}), option_timeout_s=0.3)
        (result,) = market.fetch([option(200)])
        self.assertIs(result["complete"], False)
        self.assertIsNone(result["error"])
        self.assertEqual((result["bid"], result["ask"], result["delta"]), (1.9, 2.0, 0.3011))
        self.assertEqual(conn.count("cancelMktData"), 1)

    def test_missing_contract_carries_its_error_and_the_batch_goes_on(self):
        tws = StubTws({("AAPL", 185.0, "C"): ("error", 200, "No security definition has been found")})
        market, conn, _ = self.make(tws)
        results = market.fetch([option(180), option(185), option(190)])
        self.assertEqual(results[1]["error"]["code"], NO_SECURITY_DEFINITION)
        self.assertEqual(results[1]["error"]["ib_code"], 200)
        self.assertIs(results[1]["complete"], False)
        self.assertTrue(results[0]["complete"] and results[2]["complete"])
        self.assertEqual(conn.count("cancelMktData"), 2)  # the refused one holds no line on TWS
        self.assertEqual(market.stats()["lines_in_use"], 0)

    def test_open_interest_is_waited_for_only_when_asked(self):
        events = recorded_events("option_live", 0)
        before_oi = next(i for i, (cb, args) in enumerate(events) if cb == "tickSize" and args[1] == 27)
        for want_open_interest, complete in ((False, True), (True, False)):
            market, conn, _ = self.make(StubTws({("AAPL", 190.0, "C"): "silent"}), option_timeout_s=0.3)
            job = Background(market.fetch, [option(190)], want_open_interest=want_open_interest)
            conn.wait_for(lambda: conn.count("reqMktData") == 1, "reqMktData")
            req_id = conn.req_ids()[0]
            for callback, args in recorded_events("option_live", req_id)[:before_oi]:
                conn.event(req_id, callback, args)
            (result,) = job.join()
            self.assertEqual((result["complete"], result["open_interest"]), (complete, None), want_open_interest)
            self.assertEqual(result["delta"], 0.5127)

    def test_partly_subscribed_data_is_not_an_error(self):
        market, conn, _ = self.make(StubTws({("AAPL", 190.0, "C"): "silent"}))
        job = Background(market.fetch, [option(190)])
        conn.wait_for(lambda: conn.count("reqMktData") == 1, "reqMktData")
        req_id = conn.req_ids()[0]
        conn.error(req_id, 10090, "Part of requested market data is not subscribed.")
        conn.feed(req_id, "option_live")
        (result,) = job.join()
        self.assertEqual((result["complete"], result["error"]), (True, None))

    def test_not_connected_fails_every_contract_at_once(self):
        market, conn, _ = self.make()
        conn.ready = False
        results = market.fetch([option(180), option(190)])
        self.assertEqual([r["error"]["code"] for r in results], [IB_NOT_CONNECTED] * 2)
        self.assertEqual(market.stats()["lines_in_use"], 0)


class FairShareTest(LinesTestCase):
    def test_a_small_request_gets_the_next_free_lines_while_a_big_one_holds_the_pool(self):
        big_batch = [option(s) for s in range(200)]
        small_batch = [option(s, ticker="MSFT") for s in (100, 105, 110)]
        market, conn, tws = self.make(StubTws({("AAPL", i.strike, "C"): "silent" for i in big_batch}))
        stop_big = CancelToken()
        big = Background(market.fetch, big_batch, cancel=stop_big)
        conn.wait_for(lambda: conn.count("reqMktData") == 4, "the big request alone filling the pool")
        small = Background(market.fetch, small_batch)
        deadline = time.monotonic() + WAIT_S
        while market.stats()["requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

        def big_streams() -> List[int]:
            return [req_id for req_id, key in list(tws.open.items()) if key[0] == "AAPL"]

        oldest = big_streams()[0]
        conn.feed(oldest, "option_live")  # one line frees up: the small request's streams go first
        conn.wait_for(
            lambda: len(big_streams()) == 4 and oldest not in big_streams(),
            "the big request holding the whole pool again",
        )
        self.assertEqual(
            conn.count("reqMktData"),
            4 + len(small_batch) + 1,
            "the big request took the freed line before the small one",
        )
        self.assertTrue(all(r["complete"] for r in small.join()))
        stop_big.set()
        with self.assertRaises(AgentError):
            big.join()
        self.assertEqual(market.stats()["lines_in_use"], 0)
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids()))


class LineLimitTest(LinesTestCase):
    def test_101_shrinks_the_pool_and_requeues_the_contract(self):
        market, conn, tws = self.make(StubTws(tws_lines=2), ib_max_mkt_lines=4)
        strikes = list(range(150, 200, 5))
        results = market.fetch([option(s) for s in strikes])
        self.assertTrue(all(r["complete"] and r["error"] is None for r in results))
        self.assertEqual([r["bid"] for r in results], [s / 100 for s in strikes])
        stats = market.stats()
        self.assertEqual(stats["lines_max"], 2)
        self.assertEqual(stats["line_limit_errors"], 1)  # shrunk to the lines asked before the refused one
        self.assertEqual(conn.count("reqMktData"), len(strikes) + 1)
        self.assertEqual(stats["lines_in_use"], 0)

    def test_101_with_one_line_left_is_the_answer(self):
        market, _, _ = self.make(StubTws(tws_lines=0), ib_max_mkt_lines=4)
        results = market.fetch([option(180), option(190)])
        self.assertEqual([r["error"]["ib_code"] for r in results], [101, 101])
        self.assertEqual(market.stats()["lines_max"], 1)


class SharedSubscriptionTest(LinesTestCase):
    def test_identical_contracts_in_one_batch_share_one_line(self):
        market, conn, _ = self.make()
        results = market.fetch([option(190), option(195), option(190)])
        self.assertEqual(conn.count("reqMktData"), 2)
        self.assertEqual(results[0], results[2])

    def test_concurrent_requests_share_one_subscription(self):
        market, conn, _ = self.make(StubTws({("AAPL", 190.0, "C"): "silent"}))
        first = Background(market.fetch, [option(190)])
        conn.wait_for(lambda: conn.count("reqMktData") == 1, "the first reqMktData")
        second = Background(market.fetch, [option(195), option(190)])
        conn.wait_for(lambda: conn.count("reqMktData") == 2, "the second request's own contract")
        deadline = time.monotonic() + WAIT_S
        while market.stats()["shared"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.feed(conn.req_ids()[0], "option_live")
        self.assertTrue(first.join()[0]["complete"])
        self.assertEqual([r["strike"] for r in second.join()], [195.0, 190.0])
        self.assertEqual(conn.count("reqMktData"), 2)
        self.assertEqual(market.stats()["shared"], 1)


class WarmTest(LinesTestCase):
    def test_repeat_is_answered_from_the_warm_stream_with_no_new_message(self):
        market, conn, _ = self.make(warm_lines=2, warm_seconds=60)
        market.fetch([option(180), option(185), option(190)])
        self.assertEqual(conn.count("cancelMktData"), 1)  # the least recently used one
        self.assertEqual(market.stats()["warm_lines"], 2)
        sent_before = len(conn.sent)
        results = market.fetch([option(185), option(190)])
        self.assertEqual(len(conn.sent), sent_before)
        self.assertTrue(all(r["complete"] for r in results))
        self.assertEqual(market.stats()["warm_hits"], 2)

    def test_warm_data_keeps_streaming(self):
        market, conn, _ = self.make(warm_lines=2, warm_seconds=60)
        market.fetch([option(190)])
        req_id = conn.req_ids()[0]
        conn.event(req_id, "tickPrice", (req_id, 1, 5.5, None))
        conn.event(req_id, "tickOptionComputation", (req_id, 13, 0, 0.3, 0.6, 5.6, 0.0, 0.03, 0.2, -0.05, 186.0))
        (result,) = market.fetch([option(190)])
        self.assertEqual((result["bid"], result["delta"], result["und_price"]), (5.5, 0.6, 186.0))
        self.assertEqual(conn.count("reqMktData"), 1)

    def test_warm_lines_expire(self):
        market, conn, _ = self.make(warm_lines=2, warm_seconds=0.2)
        market.fetch([option(180), option(190)])
        conn.wait_for(lambda: conn.count("cancelMktData") == 2, "the warm lines to expire")
        deadline = time.monotonic() + WAIT_S
        while market.stats()["lines_in_use"] and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual((market.stats()["lines_in_use"], market.stats()["warm_lines"]), (0, 0))
        market.fetch([option(190)])
        self.assertEqual(conn.count("reqMktData"), 3)

    def test_a_bulk_request_takes_warm_lines_back_first(self):
        batch = [option(s) for s in (150, 155, 160)]
        tws = StubTws({("AAPL", i.strike, "C"): "silent" for i in batch})
        market, conn, _ = self.make(tws, ib_max_mkt_lines=3, warm_lines=2, warm_seconds=60)
        market.fetch([option(100), option(105)])
        warm_ids = conn.req_ids()
        job = Background(market.fetch, batch)
        conn.wait_for(lambda: conn.count("reqMktData") == 5, "all three of the batch streaming at once")
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(warm_ids))
        for req_id in conn.req_ids()[2:]:
            conn.feed(req_id, "option_live")
        self.assertTrue(all(r["complete"] for r in job.join()))
        self.assertLessEqual(tws.max_open, 3)
        self.assertEqual(market.stats()["warm_lines"], 2)

    def test_data_lost_never_serves_a_warm_stream_again_and_cancels_it_only_when_its_line_is_taken_back(self):
        market, conn, _ = self.make(warm_lines=2, warm_seconds=60)
        market.fetch([option(180)])
        lost_id = conn.req_ids()[0]
        conn.event(lost_id, "tickPrice", (lost_id, 1, STALE_BID, None))
        conn.data_lost()
        self.assertEqual(conn.count("cancelMktData"), 0)
        (result,) = market.fetch([option(180)])
        self.assertEqual((result["bid"], conn.count("reqMktData"), market.stats()["warm_hits"]), (1.8, 2, 0))
        self.assertEqual(market.stats()["lines_in_use"], 2)  # both warm: the stale one until taken back
        market.close()
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids()))
        self.assertEqual(market.stats()["lines_in_use"], 0)

    def test_data_lost_cancels_and_requests_waiting_streams_again_before_any_warm_cancel(self):
        market, conn, _ = self.make(
            StubTws({("AAPL", 190.0, "C"): "silent"}), ib_max_mkt_lines=3, warm_lines=2, warm_seconds=60
        )
        market.fetch([option(180), option(185)])
        warm_ids = conn.req_ids()
        for req_id in warm_ids:
            conn.event(req_id, "tickPrice", (req_id, 1, STALE_BID, None))
        job = Background(market.fetch, [option(190)])
        conn.wait_for(lambda: conn.count("reqMktData") == 3, "the waiting stream")
        lost_id = conn.req_ids()[2]
        sent_before = len(conn.sent)
        conn.data_lost()
        conn.wait_for(lambda: conn.count("reqMktData") == 4, "the waiting stream requested again")
        (refreshed,) = market.fetch([option(185)])  # the pool is full: a stale warm line is taken back
        self.assertEqual(refreshed["bid"], 1.85)
        sent = [
            (name, args[0] if name == "cancelMktData" else args[1].strike) for name, args in conn.sent[sent_before:]
        ]
        self.assertEqual(
            sent,
            [("cancelMktData", lost_id), ("reqMktData", 190.0), ("cancelMktData", warm_ids[0]), ("reqMktData", 185.0)],
        )
        conn.feed(conn.req_ids()[3], "option_live")
        (result,) = job.join()
        self.assertEqual((result["complete"], result["error"]), (True, None))

    def test_data_lost_notice_requests_waiting_streams_again(self):
        market, conn, _ = self.make(StubTws({("AAPL", 180.0, "C"): "silent"}))
        job = Background(market.fetch, [option(180)])
        conn.wait_for(lambda: conn.count("reqMktData") == 1, "reqMktData")
        lost_id = conn.req_ids()[0]
        conn.data_lost()  # 1101 while the request waits for its fields
        conn.wait_for(lambda: conn.count("reqMktData") == 2, "the stream requested again")
        again_id = conn.req_ids()[1]
        self.assertNotEqual(again_id, lost_id)
        self.assertEqual(conn.req_ids("cancelMktData"), [lost_id])  # in case TWS still streams it
        conn.feed(again_id, "option_live")
        (result,) = job.join()
        self.assertEqual((result["complete"], result["error"]), (True, None))
        self.assertEqual(market.stats()["lines_in_use"], 0)

    def test_streams_lost_in_a_1101_are_not_cancelled_on_the_next_connection(self):
        """A drop right after a 1101, before the request thread sent their cancels: TWS ended those
        streams with the connection, and their ids mean nothing to the next one."""
        in_send, go_on = threading.Event(), threading.Event()
        stub = StubTws({("AAPL", 180.0, "C"): "silent", ("AAPL", 185.0, "C"): "silent"})

        def tws(conn, name, args):
            if name == "reqMktData" and args[1].strike == 185.0:
                in_send.set()
                go_on.wait(WAIT_S)  # the request thread waits in a paced send meanwhile
            stub(conn, name, args)

        market, conn, _ = self.make(tws)
        job = Background(market.fetch, [option(180), option(185)])
        self.assertTrue(in_send.wait(WAIT_S))
        lost_id = conn.req_ids()[0]
        conn.data_lost()
        conn.drop()
        conn.ready = True  # TWS is back before the request thread goes on
        go_on.set()
        results = job.join()
        self.assertEqual([r["error"]["code"] for r in results], [IB_NOT_CONNECTED] * 2)
        self.assertNotIn(lost_id, conn.req_ids("cancelMktData"))

    def test_close_cancels_warm_lines(self):
        market, conn, _ = self.make(warm_lines=2, warm_seconds=60)
        market.fetch([option(180), option(190)])
        market.close()
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids()))
        self.assertEqual(market.stats()["lines_in_use"], 0)


class CancelAndDropTest(LinesTestCase):
    def test_cancel_frees_every_line_and_raises_cancelled(self):
        market, conn, _ = self.make(StubTws({("AAPL", float(s), "C"): "silent" for s in range(150, 200, 5)}))
        cancel = CancelToken()
        job = Background(market.fetch, [option(s) for s in range(150, 200, 5)], cancel=cancel)
        conn.wait_for(lambda: conn.count("reqMktData") == 4, "the pool to fill")
        cancel.set()
        with self.assertRaises(AgentError) as caught:
            job.join()
        self.assertEqual(caught.exception.code, CANCELLED)
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids()))
        self.assertEqual(market.stats()["lines_in_use"], 0)

    def test_drop_mid_batch_fails_the_unfinished_and_keeps_the_finished(self):
        replies = {("AAPL", float(s), "C"): "silent" for s in range(160, 200, 5)}
        market, conn, _ = self.make(StubTws(replies), ib_max_mkt_lines=4)
        job = Background(market.fetch, [option(s) for s in range(150, 200, 5)])
        conn.wait_for(lambda: conn.count("reqMktData") == 6, "two finished and four silent lines")
        conn.drop()
        conn.ready = True  # even when TWS is back at once, this batch's connection is gone
        results = job.join()
        self.assertTrue(results[0]["complete"] and results[1]["complete"])
        self.assertEqual(results[1]["bid"], 1.55)
        self.assertEqual([r["error"]["code"] for r in results[2:]], [IB_NOT_CONNECTED] * 8)
        self.assertEqual(market.stats()["lines_in_use"], 0)


class MarketDataTypeTest(LinesTestCase):
    def types_sent(self, conn: StubConnection) -> List[int]:
        return [args[0] for name, args in conn.sent if name == "reqMarketDataType"]

    def test_auto_asks_frozen_and_falls_back_to_delayed_frozen_per_contract(self):
        market, conn, tws = self.make(StubTws(not_subscribed=("AAPL",)), market_data_type="auto")
        results = market.fetch([option(180, "P"), option(300, "C", "MSFT"), option(185, "P"), option(310, "C", "MSFT")])
        self.assertTrue(all(r["complete"] and r["error"] is None for r in results), results)
        self.assertEqual([r["market_data_type"] for r in results], ["delayed-frozen", "live", "delayed-frozen", "live"])
        asked = {(symbol, strike): (data_type, generic) for symbol, strike, _, data_type, generic in tws.asked}
        self.assertEqual(asked[("MSFT", 300.0)], (2, "100,101"))  # frozen, where subscribed
        self.assertEqual(asked[("AAPL", 180.0)], (4, ""))  # the retry: no generic ticks
        self.assertEqual(self.types_sent(conn), [4])  # then no switch back needed
        (later,) = market.fetch([option(190, "P")])  # learnt: straight to delayed-frozen
        self.assertEqual(later["market_data_type"], "delayed-frozen")
        self.assertEqual(tws.asked[-1][3:], (4, ""))
        (then,) = market.fetch([option(320, "C", "MSFT")])  # and back to frozen for MSFT
        self.assertEqual(tws.asked[-1][3:], (2, "100,101"))
        self.assertEqual(self.types_sent(conn), [4, 2])
        self.assertEqual(market.stats()["market_data_type_requested"], "frozen")
        self.assertEqual(market.stats()["lines_in_use"], 0)

    def test_delayed_data_with_open_interest_asked_does_not_wait_for_it(self):
        market, conn, tws = self.make(StubTws(delayed_only=True), market_data_type="auto", option_timeout_s=5.0)
        (result,) = market.fetch([option(180, "P")], want_open_interest=True)
        self.assertTrue(result["complete"], result)  # not at its deadline: it never waited for open interest
        self.assertEqual(tws.asked[-1][3:], (4, ""))

    def test_live_only_reports_not_subscribed(self):
        market, conn, _ = self.make(StubTws(delayed_only=True), market_data_type="live")
        (result,) = market.fetch([option(180, "P")])
        self.assertEqual((result["error"]["code"], result["error"]["ib_code"]), (MARKET_DATA_NOT_SUBSCRIBED, 354))
        self.assertEqual(conn.count("reqMarketDataType"), 0)

    def test_auto_learns_again_after_a_reconnect(self):
        market, conn, tws = self.make(StubTws(delayed_only=True), market_data_type="auto")
        market.fetch([option(180, "P")])
        conn.drop()
        conn.ready = True
        tws.data_type = 2  # what agent.ib.connection asks for on every new connection in auto
        (result,) = market.fetch([option(185, "P")])
        self.assertEqual(result["market_data_type"], "delayed-frozen")
        self.assertEqual([a[3] for a in tws.asked], [2, 4, 2, 4])
        self.assertEqual(self.types_sent(conn), [4, 4])


class StreamNoticeTest(LinesTestCase):
    def test_partial_data_notice_keeps_the_stream_and_its_line_is_cancelled(self):
        for code in (10090, 10091):
            with self.subTest(code):
                market, conn, tws = self.make(
                    StubTws({("AAPL", 200.0, "C"): ("notice", code, "option_no_model")}), option_timeout_s=5.0
                )
                (result,) = market.fetch([option(200)])
                self.assertTrue(result["complete"], result)  # no wait (to its deadline) for greeks that cannot come
                self.assertIsNone(result["error"])
                self.assertEqual((result["bid"], result["ask"]), (1.9, 2.0))
                self.assertEqual(conn.req_ids("cancelMktData"), conn.req_ids())  # TWS still streams it
                self.assertEqual(tws.open, {})
                self.assertEqual(market.stats()["partial_notices"], 1)


class IbLinkTest(LinesTestCase):
    def test_1100_fails_waiting_market_data_fast_and_1102_resumes(self):
        market, conn, tws = self.make(
            StubTws({("AAPL", 200.0, "C"): "silent", ("AAPL", 205.0, "C"): "silent"}), option_timeout_s=30.0
        )
        waiting = Background(market.fetch, [option(200), option(205)])
        conn.wait_for(lambda: len(conn.req_ids()) == 2, "both requested")
        conn.ib_link(False, 1100)
        results = waiting.join()  # silent streams, 30 s deadlines: only the 1100 can have answered them
        self.assertEqual({(r["error"]["code"], r["error"]["ib_code"]) for r in results}, {("IB_ERROR", 1100)})
        self.assertIn("lost its connection to IB's servers", results[0]["error"]["message"])
        self.assertEqual(sorted(conn.req_ids("cancelMktData")), sorted(conn.req_ids()))  # lines freed at TWS
        (refused,) = market.fetch([option(210)])  # new requests fail at once meanwhile
        self.assertEqual(refused["error"]["ib_code"], 1100)
        conn.ib_link(True, 1102)
        (again,) = market.fetch([option(215)])
        self.assertTrue(again["complete"], again)
        self.assertEqual(market.stats()["lines_in_use"], 0)


class PoolGrowsBackTest(LinesTestCase):
    def test_after_a_101_the_pool_grows_back_as_lines_free_up(self):
        from agent.ib import line_pool

        for name, value in (("GROW_AFTER_LIMIT_S", 0.05), ("GROW_STEP_S", 0.0)):
            self.addCleanup(setattr, line_pool, name, getattr(line_pool, name))
            setattr(line_pool, name, value)
        market, conn, tws = self.make(StubTws(tws_lines=2), ib_max_mkt_lines=4)
        market.fetch([option(s) for s in range(150, 200, 5)])
        self.assertEqual(market.stats()["line_limit_errors"], 1)
        self.assertLess(market.stats()["lines_max"], 4)
        tws.tws_lines = 1000  # the user closed the TWS windows holding lines
        time.sleep(0.1)
        tws.max_open = 0
        results = market.fetch([option(s) for s in range(200, 260, 5)])
        self.assertTrue(all(r["complete"] for r in results))
        self.assertEqual(market.stats()["lines_max"], 4)
        self.assertEqual(tws.max_open, 4)
        self.assertEqual(market.stats()["line_limit_errors"], 1)


if __name__ == "__main__":
    unittest.main()
