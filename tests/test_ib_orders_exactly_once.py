"""An order action happens once, or the agent says plainly it did not or that it cannot tell (issue 16):
repeated request ids (in one process, at once, after a restart), an id store that cannot be written,
and an unexpected exception anywhere in an order action. Against recorded TWS callback sequences
(tests.order_replay)."""

from __future__ import annotations

import logging
import threading
import time
import unittest
from pathlib import Path
from typing import Tuple
from unittest import mock

import ibapi.errors

from agent.errors import (
    IB_ERROR,
    IB_NOT_CONNECTED,
    INTERNAL,
    ORDER_BLOCKED,
    READ_ONLY_API,
    TIMEOUT,
    AgentError,
    IbError,
)
from agent.orders import desk as ib_orders
from agent.orders import guard as order_guard
from agent.relay import actions as relay_actions
from tests.order_replay import KEY, LOOKUP, ONCE_PLACED, DeskTestCase, load, option_order
from tests.test_relay_actions import StandInJob


class ExactlyOnceTest(DeskTestCase):
    def test_a_repeated_request_id_in_the_same_process_places_one_order(self):
        desk, conn = self.desk("placed")
        first = desk.place_order("req-1", option_order())
        self.assertEqual(desk.place_order("req-1", option_order()), first)
        self.assertEqual(conn.methods().count("placeOrder"), 1)
        self.assertEqual([line["decision"] for line in self.audit_lines()], ["allowed", "duplicate"])

    def test_concurrent_repeats_wait_for_the_first(self):
        desk, conn = self.desk("placed")
        conn.gate = threading.Event()
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(desk.place_order("req-1", option_order()))) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        conn.gate.set()
        for thread in threads:
            thread.join(10)
        self.assertEqual(len(results), 3)
        self.assertEqual({r["order_id"] for r in results}, {32})
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_a_repeated_request_id_after_an_agent_restart_places_nothing(self):
        desk, _ = self.desk("placed")
        first = desk.place_order("req-1", option_order())
        desk, conn = self.desk("placed")  # a new process: only the files remain
        self.assertEqual(desk.place_order("req-1", option_order()), first)
        self.assertEqual(conn.methods(), LOOKUP)  # only to give the status as it is now (none found: as recorded)

    def test_a_repeat_gets_the_status_as_it_is_now(self):
        desk, _ = self.desk("placed")
        self.assertEqual(desk.place_order("req-1", option_order())["status"], "PreSubmitted")
        desk, conn = self.desk("found_among_completed")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 32, "status": "Filled"})
        self.assertNotIn("placeOrder", conn.methods())

    def test_a_rejected_request_repeats_its_error_without_sending(self):
        desk, _ = self.desk("rejected")
        self.fails(IB_ERROR, desk.place_order, "req-1", option_order())
        desk, conn = self.desk("placed")
        self.assertEqual(self.fails(IB_ERROR, desk.place_order, "req-1", option_order()).ib_code, 201)
        self.assertEqual(conn.sent, [])

    def test_an_unknown_outcome_is_looked_up_by_order_ref_before_placing_again(self):
        desk, conn = self.desk("no_answer")
        self.fails(TIMEOUT, desk.place_order, "req-1", option_order())
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)
        desk, conn = self.desk("found_by_order_ref")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 31, "status": "Submitted"})
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])
        self.assertEqual(desk.request_ids.get("req-1")["order_ref"], order_guard.order_ref_for("req-1"))
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.PLACED)
        self.assertEqual(self.audit_lines()[-1]["decision"], "duplicate: found in TWS by orderRef")

    def test_a_lost_connection_while_placing_is_looked_up_among_completed_orders(self):
        desk, conn = self.desk("disconnected_while_placing")
        self.fails(IB_NOT_CONNECTED, desk.place_order, "req-1", option_order())
        desk, conn = self.desk("found_among_completed")
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 32, "status": "Filled"})
        self.assertEqual(conn.methods(), ["reqAllOpenOrders", "reqCompletedOrders"])

    def test_an_order_tws_never_got_is_placed_once_it_is_known_missing(self):
        """Known missing: no record (a new id, or a store lost), or one of an attempt stopped before
        the order was sent; TWS shows no order with its orderRef."""
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.UNKNOWN, order_id=7, maybe_sent=False)
        desk, conn = self.desk("not_found_then_placed")
        self.assertEqual(desk.place_order("req-1", option_order())["status"], "Submitted")
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails", "placeOrder"])

    def test_an_order_that_may_have_reached_tws_is_never_placed_again(self):
        """A "sending" record (a timeout, a lost connection, a crash while placing) and no such order
        in TWS: it may be held behind a precaution dialog. TIMEOUT while recent, then "cannot tell";
        never a second placeOrder (issue 16)."""
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        desk, conn = self.desk("not_found_then_placed")
        error = self.fails(TIMEOUT, desk.place_order, "req-1", option_order())
        self.assertIn("does not show it yet", error.message)
        self.assertIn("order 7 with orderRef mat-9456bdfa12ea76959c94a357", error.message)
        with mock.patch.object(time, "time", return_value=time.time() + ib_orders.RECENTLY_SENT_S + 1):
            error = self.fails(ORDER_BLOCKED, desk.place_order, "req-1", option_order())
        self.assertIn("cannot tell whether order 7 with orderRef mat-", error.message)
        self.assertIn("Check TWS's orders and trades", error.message)
        self.assertEqual(conn.methods(), LOOKUP * 2)
        self.assertEqual([line["decision"].split(":")[0] for line in self.audit_lines()], ["not sent", "refused"])
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)

    def test_an_order_filled_on_an_earlier_day_is_found_among_executions(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        execution = {"Execution": {"execId": "0001.01", "orderId": 7, "orderRef": "$ref", "shares": {"Decimal": "1"}}}
        desk, conn = self.desk(
            answers={"reqExecutions": [["execDetails", ["$id", "$aapl_call", execution]], ["execDetailsEnd", ["$id"]]]}
        )
        self.assertEqual(desk.place_order("req-1", option_order()), {"order_id": 7, "status": "Filled"})
        self.assertEqual(conn.methods(), LOOKUP)
        self.assertEqual(conn.sent[2][1][1].lastNDays, 7)

    def test_the_lookup_failing_never_places_blindly(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        desk, conn = self.desk(
            answers={"reqAllOpenOrders": [["error", [-1, 321, "The API interface is currently in Read-Only mode."]]]}
        )
        self.fails(READ_ONLY_API, desk.place_order, "req-1", option_order())
        self.assertNotIn("placeOrder", conn.methods())


class StoreFailureTest(DeskTestCase):
    def test_an_id_store_that_cannot_be_written_sends_no_order(self):
        desk, conn = self.desk("placed")
        desk.request_ids.path = Path(self.dir.name) / "missing-folder" / "order_ids.json"
        error = self.fails("INTERNAL", desk.place_order, "req-1", option_order())
        self.assertIn("the order was not sent", error.message)
        self.assertNotIn("placeOrder", conn.methods())

    def test_an_outcome_that_cannot_be_written_still_answers(self):
        desk, conn = self.desk("placed")
        real_put = desk.request_ids.put

        def put(request_id, state, **fields):
            if state != order_guard.SENDING:
                raise OSError(28, "No space left on device")
            real_put(request_id, state, **fields)

        desk.request_ids.put = put
        with self.assertLogs("ib_data_agent.orders", "ERROR"):
            self.assertEqual(desk.place_order("req-1", option_order())["order_id"], 32)
        self.assertEqual(desk.request_ids.get("req-1")["state"], order_guard.SENDING)


class Boom(RuntimeError):
    """The injected unexpected exception; its text holds the API key, which must never come out."""

    def __init__(self):
        super().__init__(f"injected failure {KEY}")


def failing_send(conn, method, reached_tws: bool, error=None):
    """conn.send raises on its first `method`: after the message went out (it is in conn.sent, TWS
    never answers it) or before anything left."""
    real_send = conn.send
    failed = []

    def send(name, *args):
        if name == method and not failed:
            failed.append(name)
            if reached_tws:
                conn.sent.append((name, args))
            raise error or Boom()
        return real_send(name, *args)

    conn.send = send


class UnexpectedErrorTest(DeskTestCase):
    """An unexpected exception anywhere in an order action: audited (INTERNAL, with the exception's
    class), the id record "unknown" when the order may have reached TWS, one console line, and a
    repeat of the id looks in TWS before placing anything."""

    def setUp(self):
        super().setUp()
        found = self.place["scenarios"]["found_by_order_ref"]["reqAllOpenOrders"]
        # TWS shows the order (as order 31) once a placeOrder reached it: the lookup before placing finds nothing
        self.reaches_tws = dict(self.place["scenarios"]["placed"], **{ONCE_PLACED: {"reqAllOpenOrders": found}})
        self.already_in_tws = dict(self.place["scenarios"]["placed"], reqAllOpenOrders=found)
        self.never_reached = self.place["scenarios"]["not_found_then_placed"]

    def internal(self, fn, *args) -> Tuple[AgentError, logging.LogRecord]:
        with self.assertLogs("ib_data_agent.orders", "WARNING") as logs:
            error = self.fails(INTERNAL, fn, *args)
        (record,) = logs.records  # one console line
        self.assertEqual(record.levelno, logging.ERROR)
        self.assertIsInstance(record.exc_info[1], Exception)  # the traceback goes to the log file
        self.assertNotIn(KEY, error.message)
        self.assertNotIn(KEY, record.getMessage())
        return error, record

    def last_audit(self, decision: str, exception: str = "Boom") -> dict:
        line = self.audit_lines()[-1]
        self.assertEqual(
            (line["decision"], line["outcome"]["error"], line["outcome"]["exception"]),
            (decision, "INTERNAL", exception),
        )
        self.assertNotIn(KEY, (Path(self.dir.name) / "order_audit.jsonl").read_text())
        return line

    def state(self, request_id="req-1"):
        record = self.desk_.request_ids.get(request_id)
        return record and record["state"]

    def test_inside_the_ibapi_call_after_the_order_went_out(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        error, record = self.internal(self.desk_.place_order, "req-1", option_order())
        for words in (
            "(Boom)",
            "order 32 SELL 1 AAPL 20300118 150 C @ 2.5",
            "may have reached TWS",
            "order 32 with orderRef mat-9456bdfa12ea76959c94a357",
            "looks in TWS first",
            "log file",
        ):
            self.assertIn(words, error.message)
        self.assertIn("req-1", record.getMessage())
        self.assertIn("may have reached TWS", record.getMessage())
        line = self.last_audit("allowed")
        self.assertEqual((line["request_id"], line["order_id"]), ("req-1", 32))
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertEqual(self.desk_.request_ids.get("req-1")["order_id"], 32)

        again = self.desk_.place_order("req-1", option_order())  # the cloud repeats the id
        self.assertEqual(again, {"order_id": 31, "status": "Submitted"})
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails", "placeOrder", "reqAllOpenOrders"])
        self.assertEqual(self.audit_lines()[-1]["decision"], "duplicate: found in TWS by orderRef")
        self.assertEqual(self.state(), order_guard.PLACED)

    def test_an_ibapi_call_that_raised_is_looked_up_after_an_agent_restart_too(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True, error=AttributeError("primaryExchange"))
        self.internal(self.desk_.place_order, "req-1", option_order())
        self.last_audit("allowed", "AttributeError")
        self.desk_, conn = self.desk(answers=self.already_in_tws)  # a new process: only the files remain
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])

    def test_ibapi_reporting_its_own_send_failure_is_not_taken_for_tws_rejecting_the_order(self):
        """ibapi 10.4x catches an exception inside placeOrder and calls error(orderId, 512, ...) instead
        of raising: through conn.send (raised) or through the order's handler (delivered)."""
        raised = IbError("Order Sending Error - broken pipe", 512)
        delivered = {"placeOrder": [["error", ["$id", 512, "Order Sending Error - broken pipe"]]]}
        for how, answers in (("raised", self.reaches_tws), ("delivered", dict(self.reaches_tws, **delivered))):
            with self.subTest(how):
                self.desk_, conn = self.desk(answers=answers)
                if how == "raised":
                    failing_send(conn, "placeOrder", reached_tws=True, error=raised)
                error, _ = self.internal(self.desk_.place_order, f"req-{how}", option_order())
                self.assertIn("may have reached TWS", error.message)
                self.last_audit("allowed", "IbapiSendError")
                self.assertEqual(self.state(f"req-{how}"), order_guard.UNKNOWN)  # not "failed"

    def test_the_send_failure_codes_are_the_pinned_ibapis(self):
        self.assertEqual(
            ib_orders.IBAPI_SEND_FAILURES, {ibapi.errors.FAIL_SEND_ORDER.code(), ibapi.errors.FAIL_SEND_CORDER.code()}
        )

    def test_inside_the_ibapi_call_before_anything_went_out(self):
        self.desk_, conn = self.desk(answers=self.never_reached)
        failing_send(conn, "placeOrder", reached_tws=False)
        error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("may have reached TWS", error.message)  # the agent cannot tell where ibapi failed
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        # TWS does not show it: never placed again under this id (it may be behind a precaution dialog)
        self.assertIn(
            "does not show it yet", self.fails(TIMEOUT, self.desk_.place_order, "req-1", option_order()).message
        )
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"] + LOOKUP)  # (the placeOrder raised)

    def test_after_the_id_was_recorded_but_before_the_order_was_sent(self):
        self.desk_, conn = self.desk(answers=self.never_reached)
        built = ib_orders.limit_order(
            order_guard.order_ref_for("req-1"),
            dict(order_guard.parse_order_params("place-order", option_order()), account="DU1234567"),
        )
        patcher = mock.patch.object(ib_orders, "limit_order", side_effect=[Boom(), built])
        patcher.start()
        self.addCleanup(patcher.stop)
        error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("before the order was sent: nothing reached TWS", error.message)
        self.assertIn("looks in TWS first", error.message)
        self.assertEqual(conn.methods(), LOOKUP + ["reqContractDetails"])
        self.last_audit("not sent: INTERNAL")
        self.assertEqual(self.state(), order_guard.UNKNOWN)  # kept safe: a repeat still looks ...
        self.assertFalse(self.desk_.request_ids.get("req-1")["maybe_sent"])  # ... and may then place it
        self.assertEqual(self.desk_.place_order("req-1", option_order())["status"], "Submitted")
        self.assertEqual(
            conn.methods(), LOOKUP + ["reqContractDetails"] + LOOKUP + ["reqContractDetails", "placeOrder"]
        )

    def test_before_anything_was_sent_or_recorded(self):
        self.desk_, conn = self.desk("placed")
        with mock.patch.object(ib_orders, "qualify_contract", side_effect=Boom()):
            error, record = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn(
            "placing order SELL 1 AAPL 20300118 150 C @ 2.5 LMT DAY before the order was sent: nothing reached TWS",
            error.message,
        )
        self.assertEqual(conn.methods(), LOOKUP)
        self.last_audit("not sent: INTERNAL")
        self.assertIsNone(self.state())  # nothing recorded: the repeat looks in TWS, then places the order once
        self.assertEqual(self.desk_.place_order("req-1", option_order()), {"order_id": 32, "status": "PreSubmitted"})
        self.assertEqual(conn.methods(), LOOKUP * 2 + ["reqContractDetails", "placeOrder"])

    def test_before_sending_a_repeat_of_an_unfinished_id_it_stays_unfinished(self):
        self.desk("no_answer")[0].request_ids.put("req-1", order_guard.SENDING, order_id=7)
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        with mock.patch.object(self.desk_, "_find_in_tws", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("looks in TWS first", error.message)
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertNotIn("placeOrder", conn.methods())

    def test_after_tws_answered(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        with mock.patch.object(self.desk_, "_first_status", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("may have reached TWS", error.message)
        self.assertEqual(self.state(), order_guard.UNKNOWN)
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_after_the_answer_was_stored_the_answer_stands(self):
        self.desk_, conn = self.desk("placed")
        with mock.patch.object(ib_orders.log, "info", side_effect=Boom()):
            error, _ = self.internal(self.desk_.place_order, "req-1", option_order())
        self.assertIn("after TWS answered (PreSubmitted)", error.message)
        self.last_audit("allowed")
        self.assertEqual(self.state(), order_guard.PLACED)
        self.assertEqual(self.desk_.place_order("req-1", option_order()), {"order_id": 32, "status": "PreSubmitted"})
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_a_store_that_cannot_record_unknown_still_leaves_the_id_unfinished(self):
        self.desk_, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        real_put = self.desk_.request_ids.put

        def put(request_id, state, **fields):
            if state == order_guard.UNKNOWN:
                raise OSError(28, "No space left on device")
            real_put(request_id, state, **fields)

        self.desk_.request_ids.put = put
        with self.assertLogs("ib_data_agent.orders", "ERROR") as logs:
            self.fails(INTERNAL, self.desk_.place_order, "req-1", option_order())
        self.assertEqual(len(logs.records), 2)
        self.assertEqual(self.state(), order_guard.SENDING)
        self.last_audit("allowed")
        self.assertEqual(self.desk_.place_order("req-1", option_order())["order_id"], 31)
        self.assertEqual(conn.methods().count("placeOrder"), 1)

    def test_cancel_inside_the_ibapi_call_and_before_it(self):
        cancel = load("cancel")["scenarios"]["cancelled"]
        desk, conn = self.desk(answers=cancel)
        failing_send(conn, "cancelOrder", reached_tws=True)
        error, _ = self.internal(desk.cancel_order, "c-1", {"order_id": 31})
        self.assertIn(
            "cancelling order 31 while sending it: the cancel may have reached TWS. Check order 31", error.message
        )
        self.assertEqual(self.audit_lines()[-1]["decision"], "allowed")
        with mock.patch.object(order_guard, "account_refusal", side_effect=Boom()):
            error, _ = self.internal(desk.cancel_order, "c-2", {"order_id": 31})
        self.assertIn("before the cancel was sent: nothing reached TWS", error.message)
        lines = self.audit_lines()
        self.assertEqual(
            [(line["request_id"], line["action"], line["order_id"], line["outcome"]["exception"]) for line in lines],
            [("c-1", "cancel-order", 31, "Boom"), ("c-2", "cancel-order", 31, "Boom")],
        )
        self.assertEqual(lines[-1]["decision"], "not sent: INTERNAL")
        self.assertEqual(desk.cancel_order("c-3", {"order_id": 31}), {"order_id": 31, "status": "Cancelled"})

    def test_through_the_worker_lane_the_console_gets_one_line(self):
        desk, conn = self.desk(answers=self.reaches_tws)
        failing_send(conn, "placeOrder", reached_tws=True)
        runner = relay_actions.RequestRunner(conn, scanner=None, desk=desk, workers=1, queue_size=4)
        runner.start()
        self.addCleanup(runner.stop)
        job = StandInJob("place-order", option_order(), "req-1")
        with self.assertLogs(level="DEBUG") as logs:
            runner.submit(job)
            deadline = time.monotonic() + 10  # the runner logs its outcome just after finishing the job
            while not any(r.name == "ib_data_agent.requests" for r in logs.records) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.assertEqual(job.error.code, INTERNAL)
        shown = [r for r in logs.records if r.levelno >= logging.INFO]
        self.assertEqual(len(shown), 1, [r.getMessage() for r in shown])
        self.assertIn("may have reached TWS", shown[0].getMessage())


if __name__ == "__main__":
    unittest.main()
