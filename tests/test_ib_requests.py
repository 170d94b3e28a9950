"""The request layer (agent.ib.requests): what ends a request, errors routed to their request only,
an id-less request seeing an order's callbacks, the connection's loss failing every pending request
at once, timeouts, and a CancelToken waking a waiter instead of being polled."""

import threading
import unittest

from ibapi.contract import Contract

from agent.errors import CANCELLED, IB_NOT_CONNECTED, NO_SECURITY_DEFINITION, TIMEOUT, AgentError
from agent.ib.requests import ORDERS, POSITIONS, CancelToken, Request, Requests
from tests.connection_replay import connected

WAIT_S = 10.0


def ends_at(end):
    return lambda name, _args: name == end


class Waiter:
    """request.wait(...) on a thread of its own; .result is its answer or the AgentError it raised."""

    def __init__(self, request, timeout=WAIT_S, cancel=None):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(request, timeout, cancel), daemon=True)
        self.thread.start()

    def _run(self, request, timeout, cancel):
        try:
            self.result = request.wait(timeout, cancel)
        except AgentError as error:
            self.result = error

    def join(self):
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the waiter was not woken"
        return self.result


class RequestTest(unittest.TestCase):
    def test_the_answer_ends_it_with_its_events_and_rows_drop_the_id(self):
        request = Request("reqContractDetails", ends_at("contractDetailsEnd"))
        request.on_event("contractDetails", (7, "row"))
        request.on_event("contractDetailsEnd", (7,))
        request.on_event("contractDetails", (7, "after the end"))
        self.assertEqual(request.wait(0)[:2], [("contractDetails", (7, "row")), ("contractDetailsEnd", (7,))])
        self.assertEqual(request.rows(("contractDetails",)), [("row",)])

    def test_an_error_is_raised_and_what_ended_it_first_decides(self):
        request = Request("reqContractDetails", ends_at("contractDetailsEnd"))
        request.on_error(200, "No security definition has been found for the request")
        request.on_event("contractDetailsEnd", (7,))
        with self.assertRaises(AgentError) as caught:
            request.wait(0)
        self.assertEqual((caught.exception.code, caught.exception.ib_code), (NO_SECURITY_DEFINITION, 200))

    def test_success_warning_and_ignored_codes_never_fail_it(self):
        request = Request("the cancel", ends_at("error"), successes=(202,), warnings=(404,), ignored=(10349,))
        request.on_error(10349, "Order TIF was set to DAY based on order preset")
        request.on_error(404, "Order held while securities are located.")
        request.on_error(202, "Order Canceled - reason:")
        self.assertEqual([name for name, _ in request.wait(0)], ["warning", "error"])
        self.assertEqual(request.warning(), "Order held while securities are located.")
        self.assertIsNone(request.error)

    def test_a_request_not_answered_in_time_raises_timeout(self):
        request = Request("reqPositions", ends_at("positionEnd"))
        with self.assertRaises(AgentError) as caught:
            request.wait(0.01)
        self.assertEqual(caught.exception.code, TIMEOUT)
        self.assertEqual(caught.exception.message, "TWS did not answer reqPositions within 0.01 s")

    def test_setting_the_cancel_wakes_the_waiter_from_its_one_wait(self):
        """No polling: the waiter sleeps once, for its whole timeout, and the cancel wakes it."""
        request, cancel = Request("reqPositions", ends_at("positionEnd")), CancelToken()
        waiting, timeouts = threading.Event(), []
        real_wait = request._changed.wait

        def wait(timeout):
            timeouts.append(timeout)
            waiting.set()
            return real_wait(timeout)

        request._changed.wait = wait
        waiter = Waiter(request, timeout=3600.0, cancel=cancel)
        self.assertTrue(waiting.wait(WAIT_S))
        cancel.set()
        error = waiter.join()
        self.assertEqual((error.code, error.message), (CANCELLED, "request cancelled"))
        self.assertEqual(len(timeouts), 1)
        self.assertGreater(timeouts[0], 3000.0)

    def test_a_cancel_set_before_the_wait_raises_at_once(self):
        cancel = CancelToken()
        cancel.set()
        with self.assertRaises(AgentError) as caught:
            Request("reqPositions", ends_at("positionEnd")).wait(3600.0, cancel)
        self.assertEqual(caught.exception.code, CANCELLED)


class CancelTokenTest(unittest.TestCase):
    def test_a_waker_is_called_once_when_set_and_never_after_its_block(self):
        token, woken = CancelToken(), []
        with token.when_set(lambda: woken.append("in")):
            self.assertFalse(token.is_set())
            token.set()
            token.set()
        with token.when_set(lambda: woken.append("already set")):
            pass
        self.assertEqual(woken, ["in", "already set"])
        self.assertTrue(token.is_set() and token.wait(0))

        later = CancelToken()
        with later.when_set(lambda: woken.append("left")):
            pass
        later.set()
        self.assertEqual(woken, ["in", "already set"])


class RequestsTest(unittest.TestCase):
    def test_an_error_goes_to_the_request_of_its_id_only(self):
        requests = Requests()
        first, second = Request("a", ends_at("end")), Request("b", ends_at("end"))
        requests.add(1, first)
        requests.add(2, second)
        self.assertTrue(requests.error(1, 200, "No security definition has been found for the request"))
        self.assertFalse(requests.error(3, 200, "nobody's"))
        with self.assertRaises(AgentError):
            first.wait(0)
        self.assertIsNone(second.error)
        self.assertIsNone(second.ended_by)

    def test_an_error_of_no_request_goes_to_the_id_less_requests_that_claim_it(self):
        requests = Requests()
        orders = Request("reqAllOpenOrders", ends_at("openOrderEnd"), claims=lambda code, _text: code == 321)
        positions = Request("reqPositions", ends_at("positionEnd"))
        requests.add(ORDERS, orders)
        requests.add(POSITIONS, positions)
        self.assertFalse(requests.error(-1, 321, "Error validating request:-'bN' : cause - Read-Only"))
        self.assertEqual(orders.error[0], 321)
        self.assertIsNone(positions.ended_by)

    def test_an_orders_callbacks_reach_its_request_and_a_pending_orders_sweep(self):
        requests, order, sweep = Requests(), Request("order 7", ends_at("orderStatus")), Request("sweep", ends_at("x"))
        requests.add(7, order)
        requests.add(ORDERS, sweep)
        self.assertTrue(requests.event(7, "orderStatus", (7, "Submitted")))
        self.assertFalse(requests.event(8, "openOrder", (8, "theirs")))
        self.assertFalse(requests.event(None, "openOrderEnd", ()))
        self.assertEqual(order.events, [("orderStatus", (7, "Submitted"))])
        self.assertEqual([name for name, _ in sweep.events], ["orderStatus", "openOrder", "openOrderEnd"])

    def test_a_key_holds_one_request_until_it_is_removed(self):
        requests, request = Requests(), Request("a", ends_at("end"))
        with requests.pending(5, request):
            self.assertFalse(requests.add(5, Request("b", ends_at("end"))))
            with self.assertRaises(RuntimeError):
                with requests.pending(5, Request("c", ends_at("end"))):
                    pass
            self.assertIs(requests.get(5), request)
        self.assertIsNone(requests.get(5))

    def test_a_notice_reaches_its_request_only_as_a_warning_it_collects(self):
        requests = Requests()
        order, other = Request("order", ends_at("end"), warnings=(399,)), Request("call", ends_at("end"))
        requests.add(7, order)
        requests.add(8, other)
        requests.notice(7, 399, "Order Message: Warning")
        requests.notice(8, 399, "Order Message: Warning")
        self.assertEqual(order.warning(), "Order Message: Warning")
        self.assertEqual(other.events, [])


class ConnectionLossTest(unittest.TestCase):
    def test_the_connections_loss_fails_every_pending_request_at_once(self):
        conn, session, _ = connected()
        sent = threading.Semaphore(0)
        session.reqContractDetails = lambda *args: sent.release()
        session.reqPositions = lambda *args: sent.release()
        results = {}

        def call():
            try:
                conn.call("reqContractDetails", conn.next_req_id(), Contract(), end="contractDetailsEnd", timeout=3600)
            except AgentError as error:
                results["call"] = error

        sweep = Request("reqPositions", ends_at("positionEnd"))
        conn.requests.add(POSITIONS, sweep)
        order = Request("order 7", ends_at("orderStatus"))
        conn.requests.add(7, order)
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        self.assertTrue(sent.acquire(timeout=WAIT_S))
        waiters = [Waiter(sweep, 3600.0), Waiter(order, 3600.0)]
        with self.assertLogs("ib_data_agent.ib", "INFO"):
            conn._go_lost(session)
        caller.join(WAIT_S)
        errors = [results.get("call")] + [waiter.join() for waiter in waiters]
        self.assertEqual([e.code for e in errors], [IB_NOT_CONNECTED] * 3)
        self.assertEqual(errors[0].message, "the connection to TWS was lost during reqContractDetails")


if __name__ == "__main__":
    unittest.main()
