"""The action table and the worker pool, with stand-ins for the TWS connection, scanner and desk."""

from __future__ import annotations

import threading
import time
import types
import unittest

from agent.errors import (
    BUSY,
    CANCELLED,
    IB_NOT_CONNECTED,
    INTERNAL,
    INVALID_REQUEST,
    UNKNOWN_ACTION,
    NoSecurityDefinition,
)
from agent.ib.requests import CancelToken
from agent.relay.actions import ACTIONS, BULK_PRICE_CONTRACTS, QUICK_WORKERS, RequestRunner

ORDER_ACTIONS = {"positions", "account-summary", "open-orders", "place-order", "cancel-order", "preview-order"}
HOLD_S = 30  # a held scanner call gives up after this: longer than StandInJob.result() waits
CONTRACT = {"ticker": "AAPL", "expiration": "20250117", "strike": 150, "right": "C"}
CHAIN = ("fetch-chain", {"ticker": "SPY"})
QUOTE = ("quote", {"tickers": ["AAPL"]})
PREVIEW = {
    "contract": {"ticker": "AAPL", "sec_type": "STK"},
    "action": "BUY",
    "quantity": 1,
    "order_type": "LMT",
    "limit_price": 100,
}


class StandInJob:
    def __init__(self, action, params=None, request_id="r1"):
        self.id, self.action, self.params = request_id, action, {} if params is None else params
        self.cancel = CancelToken()
        self.done = threading.Event()
        self.data = self.error = None

    def progress(self, done, total):
        pass

    def finish(self, data=None, error=None):
        self.data, self.error = data, error
        self.done.set()

    def result(self):
        if not self.done.wait(10):
            raise AssertionError(f"no answer to {self.action}")
        return self.data, self.error


class StandInConn:
    def __init__(self, ready=True):
        self.ready = ready

    def status(self):
        return {"connected": self.ready, "error": None if self.ready else "port 7497: connection refused"}


class RecordingScanner:
    """Records each call; calls to the methods named in hold() wait until release()."""

    def __init__(self):
        self.calls = []
        self.gates = {}
        self.fail_with = None
        self._called = threading.Condition()

    def hold(self, *names):
        for name in names:
            self.gates[name] = threading.Event()

    def release(self):
        for gate in self.gates.values():
            gate.set()

    def release_when_cancelled(self, jobs):
        """Stands in for a scanner that stops when its request is cancelled."""
        threading.Thread(
            target=lambda: all(job.cancel.wait(10) for job in jobs) and self.release(), daemon=True
        ).start()

    def wait_calls(self, count):
        with self._called:
            if not self._called.wait_for(lambda: len(self.calls) >= count, 10):
                raise AssertionError(f"{len(self.calls)} scanner calls, expected {count}")

    def _record(self, name, *args, **kwargs):
        with self._called:
            self.calls.append((name, args, {k: v for k, v in kwargs.items() if k not in ("progress", "cancel")}))
            self._called.notify_all()
        if name in self.gates:
            self.gates[name].wait(HOLD_S)
        if self.fail_with is not None:
            raise self.fail_with
        return {"called": name}

    def get_available_expirations(self, ticker, exchange="SMART"):
        return self._record("expirations", ticker, exchange=exchange)

    def quote(self, tickers, cancel=None):
        return self._record("quote", tickers)

    def fetch_option_chain(self, ticker, filters, progress=None, cancel=None):
        return self._record("fetch_option_chain", ticker, filters)

    def fetch_prices(self, contracts, progress=None, cancel=None):
        return self._record("fetch_prices", contracts)

    def sell_scan(self, ticker, right, **kwargs):
        return self._record("sell_scan", ticker, right, **kwargs)


class StandInSubscriptions:
    """Records calls; subscribe answers with a subscription id, or waits on `gate` when cleared."""

    def __init__(self):
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()

    def subscribe(self, contracts, tickers, interval_ms, cancel=None):
        self.calls.append(("subscribe", contracts, tickers, interval_ms))
        self.gate.wait(HOLD_S)
        return {"subscription": "sub-1", "options": [], "underlyings": {}}

    def activate(self, sub_id):
        self.calls.append(("activate", sub_id))

    def unsubscribe(self, sub_id):
        self.calls.append(("unsubscribe", sub_id))
        return sub_id == "sub-1"

    def wait_call(self, call):
        """The runner calls activate / unsubscribe just after the answer: wait for it."""
        deadline = time.monotonic() + 10
        while call not in self.calls:
            if time.monotonic() > deadline:
                raise AssertionError(f"{call} never called: {self.calls}")
            time.sleep(0.01)


class StandInAccount:
    def positions(self):
        return {"positions": []}

    def summary(self):
        return {"accounts": {}}


class StandInAudit:
    """The desk's audit log, as order_preview uses it: lines kept in memory."""

    def __init__(self):
        self.lines = []

    def check(self):
        pass

    def write(self, *line):
        self.lines.append(line)


class StandInDesk:
    def __init__(self):
        self.account = StandInAccount()
        # What preview-order (order_preview) reads of the desk: with orders off it answers from the
        # policy alone, never touching conn.
        self.audit, self.conn = StandInAudit(), None
        self.config = types.SimpleNamespace(allow_orders="off", max_order_quantity=10, max_order_notional=25000.0)
        self.calls = []
        self.audited = []  # (action, request id, error code) of requests it never ran
        self.gate = threading.Event()
        self.gate.set()  # clear it to hold place_order until it is set again
        self.started = threading.Semaphore(0)

    def place_order(self, request_id, params, cancel=None):
        self.calls.append(("place_order", request_id, params))
        self.started.release()
        self.gate.wait(10)
        return {"order_id": 5, "status": "Submitted"}

    def cancel_order(self, request_id, params, cancel=None):
        return {"order_id": 5, "status": "Cancelled"}

    def audit_unserved(self, action, request_id, params, error):
        self.audited.append((action, request_id, error.code))
        return error

    def open_orders(self):
        return {"orders": []}


class RunnerCase(unittest.TestCase):
    workers, queue_size = 2, 4

    def setUp(self):
        self.conn = StandInConn()
        self.scanner = RecordingScanner()
        self.desk = None
        self.runner = self.make_runner()
        self.addCleanup(self.scanner.release)  # before the runners stop (cleanups run last first)

    def make_runner(self, desk=None, subscriptions=None):
        runner = RequestRunner(
            self.conn, self.scanner, desk, workers=self.workers, queue_size=self.queue_size, subscriptions=subscriptions
        )
        runner.start()
        self.addCleanup(runner.stop, 2)
        return runner

    def run_action(self, action, params=None, runner=None):
        job = StandInJob(action, params)
        (runner or self.runner).submit(job)
        return job.result()

    def submit(self, action_and_params, request_id, runner=None):
        job = StandInJob(*action_and_params, request_id)
        (runner or self.runner).submit(job)
        return job

    def start(self, action_and_params, request_id, runner=None):
        """Submit, and return once the request has reached the scanner (so no longer fills a queue)."""
        calls = len(self.scanner.calls)
        job = self.submit(action_and_params, request_id, runner)
        self.scanner.wait_calls(calls + 1)
        return job

    def in_flight(self, runner=None):
        status = self.submit(("status", None), "status", runner)
        return status.result()[0]["in_flight"]

    def assert_invalid(self, action, params, message):
        data, error = self.run_action(action, params)
        self.assertIsNotNone(error, data)
        self.assertEqual((error.code, error.message), (INVALID_REQUEST, message))
        self.assertEqual(self.scanner.calls, [])


class Validation(RunnerCase):
    def test_messages_name_the_field(self):
        cases = [
            ("quote", {"tickers": ["AAPL", "MSFT", "SPY", 42]}, "params.tickers[3]: must be a ticker symbol"),
            ("quote", {"tickers": []}, "params.tickers: must be a list of 1 to 200 items"),
            ("quote", {}, "params.tickers: is required"),
            ("quote", {"tickers": ["AAPL"], "ticker": "X"}, "params.ticker: unknown parameter"),
            ("expirations", {"ticker": "AAPL; DROP"}, "params.ticker: must be a ticker symbol"),
            (
                "fetch-chain",
                {"ticker": "AAPL", "expirations": ["2025-01-17"]},
                "params.expirations[0]: must be a date YYYYMMDD",
            ),
            (
                "fetch-chain",
                {"ticker": "AAPL", "min_days": 30, "max_days": 7},
                "params.max_days: must not be less than min_days",
            ),
            (
                "fetch-chain",
                {"ticker": "AAPL", "strikes_around": True},
                "params.strikes_around: must be a whole number from 1 to 500",
            ),
            ("fetch-chain", {"ticker": "AAPL", "rights": ["C", "X"]}, 'params.rights[1]: must be "C" or "P"'),
            (
                "fetch-chain",
                {"ticker": "AAPL", "strike_min": -5},
                "params.strike_min: must be a number greater than 0 and at most 10000000",
            ),
            (
                "fetch-prices",
                {
                    "contracts": [
                        {"ticker": "AAPL", "expiration": "20250117", "strike": 150, "right": "C"},
                        {"ticker": "AAPL", "expiration": "20250117", "strike": "x", "right": "C"},
                    ]
                },
                "params.contracts[1].strike: must be a number greater than 0 and at most 10000000",
            ),
            (
                "fetch-prices",
                {"contracts": [{"ticker": "AAPL", "expiration": "20250117", "strike": 1}]},
                "params.contracts[0].right: is required",
            ),
            ("fetch-prices", {"contracts": "AAPL"}, "params.contracts: must be a list of 1 to 2000 items"),
            (
                "sell-scan",
                {"ticker": "AAPL", "right": "P", "otm_min_pct": float("inf")},
                "params.otm_min_pct: must be a number from -100 to 1000",
            ),
            ("sell-scan", {"ticker": "AAPL"}, "params.right: is required"),
            (
                "sell-scan",
                {"ticker": "XYZ", "right": "P", "include_adjusted": 1},
                "params.include_adjusted: must be true or false",
            ),
            (
                "fetch-chain",
                {"ticker": "XYZ", "include_adjusted": "true"},
                "params.include_adjusted: must be true or false",
            ),
        ]
        for action, params, message in cases:
            with self.subTest(action=action, params=params):
                self.assert_invalid(action, params, message)

    def test_a_batch_over_the_limit_is_refused(self):
        contract = {"ticker": "AAPL", "expiration": "20250117", "strike": 150, "right": "C"}
        self.assert_invalid(
            "fetch-prices", {"contracts": [contract] * 2001}, "params.contracts: must be a list of 1 to 2000 items"
        )

    def test_defaults_and_normalisation_reach_the_scanner(self):
        self.run_action("sell-scan", {"ticker": " aapl ", "right": "put"})
        self.run_action("fetch-chain", {"ticker": "spy", "rights": ["p", "P"], "min_days": 7.0})
        self.run_action("expirations", {"ticker": "BRK B"})
        self.run_action(
            "fetch-prices", {"contracts": [{"ticker": "aapl", "expiration": "20250117", "strike": 150, "right": "c"}]}
        )
        self.run_action("quote", {"tickers": ["aapl", "AAPL", "msft"]})
        self.assertEqual(
            self.scanner.calls,
            [
                (
                    "sell_scan",
                    ("AAPL", "P"),
                    {"min_days": 0, "max_days": 60, "otm_min_pct": 0.0, "otm_max_pct": 20.0, "include_adjusted": False},
                ),
                (
                    "fetch_option_chain",
                    (
                        "SPY",
                        {
                            "expirations": None,
                            "min_days": 7,
                            "max_days": None,
                            "strike_min": None,
                            "strike_max": None,
                            "strikes_around": None,
                            "rights": ["P"],
                            "include_adjusted": False,
                        },
                    ),
                    {},
                ),
                ("expirations", ("BRK B",), {"exchange": "SMART"}),
                (
                    "fetch_prices",
                    (
                        [
                            {
                                "ticker": "AAPL",
                                "expiration": "20250117",
                                "strike": 150.0,
                                "right": "C",
                                "trading_class": None,
                                "exchange": "SMART",
                            }
                        ],
                    ),
                    {},
                ),
                ("quote", (["AAPL", "MSFT"],), {}),
            ],
        )

    def test_fetch_chain_default_rights_are_both(self):
        self.run_action("fetch-chain", {"ticker": "AAPL"})
        self.assertEqual(self.scanner.calls[0][1][1]["rights"], ["C", "P"])


class Dispatch(RunnerCase):
    def test_unknown_action_lists_what_the_agent_serves(self):
        data, error = self.run_action("launch-rocket")
        self.assertEqual(error.code, UNKNOWN_ACTION)
        self.assertIn("fetch-chain", error.message)

    def test_order_actions_are_unknown_without_a_desk_and_served_with_one(self):
        self.assertEqual(set(self.runner.names) & ORDER_ACTIONS, set())
        self.assertEqual(self.run_action("place-order", {})[1].code, UNKNOWN_ACTION)
        desk = StandInDesk()
        runner = self.make_runner(desk)
        self.assertEqual(set(runner.names), {name for name, a in ACTIONS.items() if not a.needs_subscriptions})
        raw = {"contract": {"ticker": "AAPL", "sec_type": "STK"}, "action": "BUY", "quantity": "lots"}
        data, error = self.run_action("place-order", raw, runner)
        self.assertIsNone(error)
        # the desk checks and audits order params itself, so they reach it untouched, with the request id
        self.assertEqual(desk.calls, [("place_order", "r1", raw)])

    def test_tws_not_connected_answers_at_once_without_touching_the_scanner(self):
        self.conn.ready = False
        data, error = self.run_action("quote", {"tickers": ["AAPL"]})
        self.assertEqual(error.code, IB_NOT_CONNECTED)
        self.assertIn("connection refused", error.message)
        self.assertEqual(self.scanner.calls, [])

    def test_status_needs_no_tws_and_counts_requests(self):
        self.conn.ready = False
        self.run_action("quote", {"tickers": ["AAPL"]})
        data, error = self.run_action("status")
        self.assertIsNone(error)
        self.assertEqual(data["connected"], False)
        self.assertEqual(data["requests_served"], 1)
        self.assertEqual(data["in_flight"], 0)  # idle: the status request does not count itself
        self.assertGreaterEqual(data["uptime_s"], 0)

    def test_an_unexpected_exception_is_internal_with_a_short_message_and_a_logged_traceback(self):
        self.scanner.fail_with = KeyError("strike_grid")
        with self.assertLogs("ib_data_agent.requests", "ERROR") as logs:
            data, error = self.run_action("quote", {"tickers": ["AAPL"]})
        self.assertEqual(error.code, INTERNAL)
        self.assertNotIn("Traceback", error.message)
        self.assertIn("KeyError", error.message)
        self.assertIn("Traceback", logs.output[0])

    def test_agent_errors_from_the_scanner_pass_through(self):
        self.scanner.fail_with = NoSecurityDefinition("IB has no contract ZZZZ", 200)
        data, error = self.run_action("expirations", {"ticker": "ZZZZ"})
        self.assertEqual((error.code, error.ib_code), ("NO_SECURITY_DEFINITION", 200))


class Pool(RunnerCase):
    workers, queue_size = 1, 1

    def test_a_full_queue_answers_busy_at_once_and_status_still_answers(self):
        self.scanner.hold("fetch_option_chain")
        running = self.start(CHAIN, "running")
        queued = self.submit(CHAIN, "queued")
        refused = self.submit(CHAIN, "refused")  # returns while the worker is still blocked: submit never waits
        self.assertEqual(refused.result()[1].code, BUSY)
        self.assertEqual(self.in_flight(), 2)  # the running and the queued one, not the status request
        self.scanner.release()
        self.assertIsNone(running.result()[1])
        self.assertIsNone(queued.result()[1])

    def test_cancel_before_start_and_during_work(self):
        self.scanner.hold("fetch_option_chain")
        running = self.start(CHAIN, "running")
        queued = self.submit(CHAIN, "queued")
        queued.cancel.set()
        running.cancel.set()
        self.scanner.release()
        self.assertEqual(running.result()[1].code, CANCELLED)
        self.assertEqual(queued.result()[1].code, CANCELLED)
        self.assertEqual(len(self.scanner.calls), 1)  # the queued one never ran

    def test_stop_cancels_queued_and_running_work_in_both_lanes_and_refuses_new_requests(self):
        self.scanner.hold("fetch_option_chain", "quote")
        running = [self.start(CHAIN, "chain")] + [self.start(QUOTE, f"quote-{n}") for n in range(QUICK_WORKERS)]
        queued = [self.submit(CHAIN, "queued chain"), self.submit(QUOTE, "queued quote")]
        self.assertEqual(self.in_flight(), len(running) + len(queued))
        self.scanner.release_when_cancelled(running)
        self.runner.stop(timeout=5)
        self.assertEqual(
            {job.id: job.result()[1].code for job in running + queued}, {job.id: CANCELLED for job in running + queued}
        )
        self.assertEqual(len(self.scanner.calls), len(running))  # the queued ones never ran
        self.assertEqual(self.runner.in_flight, 0)
        late = self.submit(QUOTE, "late")
        self.assertEqual(late.result()[1].code, BUSY)
        self.assertIn("shutting down", late.result()[1].message)


class Lanes(RunnerCase):
    """Unbounded work (chains, scans, big price batches) must never hold up a quote or an order."""

    workers, queue_size = 4, 2

    def test_quick_requests_are_served_while_every_bulk_worker_is_busy(self):
        desk = StandInDesk()
        runner = self.make_runner(desk, StandInSubscriptions())
        self.scanner.hold("fetch_option_chain", "sell_scan")
        bulk = [self.start(CHAIN, f"chain-{n}", runner) for n in range(self.workers - 1)]
        bulk.append(self.start(("sell-scan", {"ticker": "SPY", "right": "P"}), "scan", runner))
        big_batch = self.submit(("fetch-prices", {"contracts": [CONTRACT] * (BULK_PRICE_CONTRACTS + 1)}), "big", runner)
        quick = [
            QUOTE,
            ("expirations", {"ticker": "AAPL"}),
            ("fetch-prices", {"contracts": [CONTRACT] * BULK_PRICE_CONTRACTS}),
            ("positions", {}),
            ("account-summary", {}),
            ("open-orders", {}),
            ("place-order", {"order": "checked by the desk"}),
            ("cancel-order", {"order_id": 5}),
            ("subscribe", {"tickers": ["AAPL"]}),
            ("unsubscribe", {"subscription": "sub-1"}),
            ("preview-order", PREVIEW),
        ]
        self.assertEqual({name for name, _ in quick} | {"fetch-chain", "sell-scan", "status"}, set(ACTIONS))
        for action, params in quick:
            with self.subTest(action=action):
                self.assertEqual(self.run_action(action, params, runner)[1], None)
        self.assertEqual(
            desk.audit.lines[-1][3], "refused: ALLOW_ORDERS=off: orders are turned off in the agent's config.env"
        )
        self.assertEqual(self.in_flight(runner), self.workers + 1)  # the held bulk work and the big batch
        self.assertEqual([c[0] for c in self.scanner.calls].count("fetch_prices"), 1)  # only the small one
        self.scanner.release()
        for job in bulk + [big_batch]:
            self.assertIsNone(job.result()[1], job.id)
        self.assertEqual(len(self.scanner.calls[-1][1][0]), BULK_PRICE_CONTRACTS + 1)

    def test_a_full_quick_queue_answers_busy_while_bulk_work_is_still_taken(self):
        self.scanner.hold("quote")
        running = [self.start(QUOTE, f"running-{n}") for n in range(QUICK_WORKERS)]
        queued = [self.submit(QUOTE, f"queued-{n}") for n in range(self.queue_size)]
        refused = self.submit(QUOTE, "refused")
        self.assertEqual(refused.result()[1].code, BUSY)
        self.assertIn("quick", refused.result()[1].message)
        self.assertIsNone(self.run_action(*CHAIN)[1])
        self.assertEqual(self.in_flight(), QUICK_WORKERS + self.queue_size)
        self.scanner.release()
        for job in running + queued:
            self.assertIsNone(job.result()[1], job.id)


class OrderRequests(RunnerCase):
    """Every order request gets its audit line before its answer, also when the desk never ran it;
    an order sent to TWS is answered with its outcome, never CANCELLED (issue 16)."""

    queue_size = 1
    ORDER = ("place-order", {"order": "checked by the desk"})

    def setUp(self):
        super().setUp()
        self.desk = StandInDesk()
        self.runner = self.make_runner(self.desk)

    def hold_quick_lane(self):
        self.desk.gate.clear()
        self.addCleanup(self.desk.gate.set)
        running = []
        for n in range(QUICK_WORKERS):  # one at a time: the queue holds one
            running.append(self.submit(self.ORDER, f"running-{n}"))
            self.assertTrue(self.desk.started.acquire(timeout=10))
        return running

    def test_busy_and_cancelled_before_start_are_audited_before_the_answer(self):
        running = self.hold_quick_lane()
        queued = self.submit(self.ORDER, "queued")
        busy = self.submit(("cancel-order", {"order_id": 5}), "busy")
        self.assertEqual(busy.result()[1].code, BUSY)
        self.assertEqual(self.desk.audited, [("cancel-order", "busy", BUSY)])
        queued.cancel.set()
        self.desk.gate.set()
        self.assertEqual(queued.result()[1].code, CANCELLED)
        self.assertIn("nothing was sent to TWS", queued.result()[1].message)
        self.assertEqual(self.desk.audited[-1], ("place-order", "queued", CANCELLED))
        for job in running:
            self.assertIsNone(job.result()[1])

    def test_a_cancel_after_the_order_went_out_gets_the_orders_outcome(self):
        (job,) = self.hold_quick_lane()[:1]
        job.cancel.set()
        self.desk.gate.set()
        self.assertEqual(job.result(), ({"order_id": 5, "status": "Submitted"}, None))

    def test_shutting_down_is_audited_too(self):
        self.runner.stop(1)
        self.assertEqual(self.submit(self.ORDER, "late").result()[1].code, BUSY)
        self.assertEqual(self.desk.audited, [("place-order", "late", BUSY)])


class SubscribeRequests(RunnerCase):
    def test_unknown_without_subscriptions(self):
        self.assertEqual(self.run_action("subscribe", {"tickers": ["AAPL"]})[1].code, UNKNOWN_ACTION)

    def test_params_are_checked_and_updates_start_only_after_the_answer(self):
        subs = StandInSubscriptions()
        runner = self.make_runner(subscriptions=subs)
        for params, message in (
            ({}, "params.contracts: contracts or tickers (or both) are required"),
            ({"tickers": ["AAPL"], "interval_ms": 249}, "params.interval_ms: must be a whole number from 250 to 60000"),
            ({"contracts": [dict(CONTRACT, right="X")]}, 'params.contracts[0].right: must be "C" or "P"'),
        ):
            error = self.run_action("subscribe", params, runner)[1]
            self.assertEqual((error.code, error.message), (INVALID_REQUEST, message))
        self.assertEqual(subs.calls, [])
        data, error = self.run_action("subscribe", {"contracts": [CONTRACT]}, runner)
        self.assertIsNone(error)
        self.assertEqual(
            subs.calls[0][1:], ([dict(CONTRACT, strike=150.0, trading_class=None, exchange="SMART")], [], 1000)
        )
        subs.wait_call(("activate", "sub-1"))
        self.assertEqual(
            self.run_action("unsubscribe", {"subscription": "sub-1"}, runner),
            ({"subscription": "sub-1", "ended": True}, None),
        )

    def test_a_subscribe_cancelled_after_its_picture_leaves_nothing_behind(self):
        subs = StandInSubscriptions()
        subs.gate.clear()
        runner = self.make_runner(subscriptions=subs)
        job = self.submit(("subscribe", {"tickers": ["AAPL"]}), "s1", runner)
        deadline = time.monotonic() + 10
        while not subs.calls:  # running: its picture is being taken
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        job.cancel.set()
        subs.gate.set()
        self.assertEqual(job.result()[1].code, CANCELLED)
        subs.wait_call(("unsubscribe", "sub-1"))
        self.assertNotIn(("activate", "sub-1"), subs.calls)


if __name__ == "__main__":
    unittest.main()
