"""The action table and the worker pool, with stand-ins for the TWS connection, scanner and desk."""
from __future__ import annotations

import threading
import unittest

from agent_errors import (BUSY, CANCELLED, IB_NOT_CONNECTED, INTERNAL, INVALID_REQUEST, UNKNOWN_ACTION,
                          AgentError)
from relay_actions import ACTIONS, RequestRunner

ORDER_ACTIONS = {"positions", "account-summary", "open-orders", "place-order", "cancel-order"}


class StandInJob:
    def __init__(self, action, params=None, request_id="r1"):
        self.id, self.action, self.params = request_id, action, {} if params is None else params
        self.cancel = threading.Event()
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
    """Records each call; `gate` (when set up) holds calls until released."""

    def __init__(self):
        self.calls = []
        self.gate = None
        self.started = threading.Event()
        self.fail_with = None

    def _record(self, name, *args, **kwargs):
        self.calls.append((name, args, {k: v for k, v in kwargs.items() if k not in ("progress", "cancel")}))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
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


class StandInDesk:
    def __init__(self):
        self.calls = []

    def place_order(self, request_id, params):
        self.calls.append(("place_order", request_id, params))
        return {"order_id": 5, "status": "Submitted"}

    def positions(self):
        return {"positions": []}


class RunnerCase(unittest.TestCase):
    workers, queue_size = 2, 4

    def setUp(self):
        self.conn = StandInConn()
        self.scanner = RecordingScanner()
        self.desk = None
        self.runner = self.make_runner()

    def make_runner(self, desk=None):
        runner = RequestRunner(self.conn, self.scanner, desk, workers=self.workers, queue_size=self.queue_size)
        runner.start()
        self.addCleanup(runner.stop, 2)
        return runner

    def run_action(self, action, params=None, runner=None):
        job = StandInJob(action, params)
        (runner or self.runner).submit(job)
        return job.result()

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
            ("fetch-chain", {"ticker": "AAPL", "expirations": ["2025-01-17"]},
             "params.expirations[0]: must be a date YYYYMMDD"),
            ("fetch-chain", {"ticker": "AAPL", "min_days": 30, "max_days": 7},
             "params.max_days: must not be less than min_days"),
            ("fetch-chain", {"ticker": "AAPL", "strikes_around": True},
             "params.strikes_around: must be a whole number from 1 to 500"),
            ("fetch-chain", {"ticker": "AAPL", "rights": ["C", "X"]}, 'params.rights[1]: must be "C" or "P"'),
            ("fetch-chain", {"ticker": "AAPL", "strike_min": -5},
             "params.strike_min: must be a number greater than 0 and at most 10000000"),
            ("fetch-prices", {"contracts": [{"ticker": "AAPL", "expiration": "20250117", "strike": 150, "right": "C"},
                                            {"ticker": "AAPL", "expiration": "20250117", "strike": "x", "right": "C"}]},
             "params.contracts[1].strike: must be a number greater than 0 and at most 10000000"),
            ("fetch-prices", {"contracts": [{"ticker": "AAPL", "expiration": "20250117", "strike": 1}]},
             "params.contracts[0].right: is required"),
            ("fetch-prices", {"contracts": "AAPL"}, "params.contracts: must be a list of 1 to 2000 items"),
            ("sell-scan", {"ticker": "AAPL", "right": "P", "otm_min_pct": float("inf")},
             "params.otm_min_pct: must be a number from -100 to 1000"),
            ("sell-scan", {"ticker": "AAPL"}, "params.right: is required"),
        ]
        for action, params, message in cases:
            with self.subTest(action=action, params=params):
                self.assert_invalid(action, params, message)

    def test_a_batch_over_the_limit_is_refused(self):
        contract = {"ticker": "AAPL", "expiration": "20250117", "strike": 150, "right": "C"}
        self.assert_invalid("fetch-prices", {"contracts": [contract] * 2001},
                            "params.contracts: must be a list of 1 to 2000 items")

    def test_defaults_and_normalisation_reach_the_scanner(self):
        self.run_action("sell-scan", {"ticker": " aapl ", "right": "put"})
        self.run_action("fetch-chain", {"ticker": "spy", "rights": ["p", "P"], "min_days": 7.0})
        self.run_action("expirations", {"ticker": "BRK B"})
        self.run_action("fetch-prices", {"contracts": [
            {"ticker": "aapl", "expiration": "20250117", "strike": 150, "right": "c"}]})
        self.run_action("quote", {"tickers": ["aapl", "AAPL", "msft"]})
        self.assertEqual(self.scanner.calls, [
            ("sell_scan", ("AAPL", "P"), {"min_days": 0, "max_days": 60, "otm_min_pct": 0.0, "otm_max_pct": 20.0}),
            ("fetch_option_chain", ("SPY", {"expirations": None, "min_days": 7, "max_days": None,
                                            "strike_min": None, "strike_max": None, "strikes_around": None,
                                            "rights": ["P"]}), {}),
            ("expirations", ("BRK B",), {"exchange": "SMART"}),
            ("fetch_prices", ([{"ticker": "AAPL", "expiration": "20250117", "strike": 150.0, "right": "C",
                                "trading_class": None, "exchange": "SMART"}],), {}),
            ("quote", (["AAPL", "MSFT"],), {}),
        ])

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
        self.assertEqual(set(runner.names), set(ACTIONS))
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
        with self.assertLogs("agent.requests", "ERROR") as logs:
            data, error = self.run_action("quote", {"tickers": ["AAPL"]})
        self.assertEqual(error.code, INTERNAL)
        self.assertNotIn("Traceback", error.message)
        self.assertIn("KeyError", error.message)
        self.assertIn("Traceback", logs.output[0])

    def test_agent_errors_from_the_scanner_pass_through(self):
        self.scanner.fail_with = AgentError("NO_SECURITY_DEFINITION", "IB has no contract ZZZZ", 200)
        data, error = self.run_action("expirations", {"ticker": "ZZZZ"})
        self.assertEqual((error.code, error.ib_code), ("NO_SECURITY_DEFINITION", 200))


class Pool(RunnerCase):
    workers, queue_size = 1, 1

    def test_a_full_queue_answers_busy_at_once_and_status_still_answers(self):
        self.scanner.gate = threading.Event()
        running, queued, refused = (StandInJob("quote", {"tickers": ["AAPL"]}, f"j{n}") for n in range(3))
        self.runner.submit(running)
        self.assertTrue(self.scanner.started.wait(10))
        self.runner.submit(queued)
        self.runner.submit(refused)  # returns while the worker is still blocked: submit never waits
        self.assertFalse(self.scanner.gate.is_set())
        self.assertEqual(refused.result()[1].code, BUSY)
        status = StandInJob("status")
        self.runner.submit(status)
        self.assertEqual(status.result()[0]["in_flight"], 2)  # the running and the queued one, not itself
        self.scanner.gate.set()
        self.assertIsNone(running.result()[1])
        self.assertIsNone(queued.result()[1])

    def test_cancel_before_start_and_during_work(self):
        self.scanner.gate = threading.Event()
        running = StandInJob("quote", {"tickers": ["AAPL"]}, "running")
        queued = StandInJob("quote", {"tickers": ["MSFT"]}, "queued")
        self.runner.submit(running)
        self.assertTrue(self.scanner.started.wait(10))
        self.runner.submit(queued)
        queued.cancel.set()
        running.cancel.set()
        self.scanner.gate.set()
        self.assertEqual(running.result()[1].code, CANCELLED)
        self.assertEqual(queued.result()[1].code, CANCELLED)
        self.assertEqual(len(self.scanner.calls), 1)  # the queued one never ran

    def test_stop_cancels_in_flight_work_and_refuses_new_requests(self):
        self.scanner.gate = threading.Event()
        running = StandInJob("quote", {"tickers": ["AAPL"]})
        self.runner.submit(running)
        self.assertTrue(self.scanner.started.wait(10))
        threading.Timer(0.2, self.scanner.gate.set).start()  # the scanner notices the cancel
        self.runner.stop(timeout=5)
        self.assertTrue(running.cancel.is_set())
        self.assertEqual(running.result()[1].code, CANCELLED)
        late = StandInJob("quote", {"tickers": ["AAPL"]})
        self.runner.submit(late)
        self.assertEqual(late.result()[1].code, BUSY)
        self.assertIn("shutting down", late.result()[1].message)


if __name__ == "__main__":
    unittest.main()
