"""Account and order actions (DESIGN.md 4) behind the local order policy (DESIGN.md 5.3).

Every place/cancel request passes, in this order: the audit log can be written -> params shape ->
the request-id record (a finished one answers) -> policy rules that need no TWS (ALLOW_ORDERS=off,
quantity cap, notional cap with the standard multiplier) -> TWS connected -> account rules
(paper/live, account of this session) -> TWS looked up for the id's orderRef (open orders, today's
completed orders, executions of the last 7 days) -> contract qualification -> notional cap with
the qualified multiplier -> the record written -> placeOrder. Nothing reaches TWS before the policy
said yes, and every request ends with one audit line whose `decision` is one of:
  "allowed"            the order (or cancel) was sent to TWS; `outcome` says what TWS answered
  "refused: <rule>"    the local policy said no (ORDER_BLOCKED)
  "not sent: <code>"   stopped before the policy could finish (bad params, TWS not connected,
                       no such contract, ...)
  "duplicate..."       a request id seen before: answered from the request-id store, or from the
                       order TWS has with the id's orderRef (agent.orders.guard.order_ref_for); never
                       placed again. An id whose order may have reached TWS and that TWS does not
                       show is refused (TIMEOUT, then ORDER_BLOCKED "cannot tell"), never re-placed.

An unexpected exception anywhere in a place/cancel request is caught in one place (OrderDesk._audited):
its audit line says outcome INTERNAL and the exception's class, the request-id record becomes
"unknown" when anything may have reached TWS (so a repeat of the id looks in TWS before placing),
and the console gets one line saying what failed and what to check in TWS.

What TWS shows of orders is agent.orders.book's; the account reads (positions, account summary) are
ib_account's; the waits on TWS's answers (agent.ib.requests), sweeps and the per-id locks are agent.orders.wait's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from decimal import Decimal
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ibapi.contract import Contract
from ibapi.order import Order
from ibapi.order_cancel import OrderCancel

from agent import log as agent_log
from agent.errors import (
    CANCELLED,
    IB_NOT_CONNECTED,
    TIMEOUT,
    AgentError,
    Cancelled,
    IbNotConnected,
    Internal,
    InvalidRequest,
    NoSecurityDefinition,
    OrderBlocked,
    RequestTimeout,
)
from agent.ib.requests import CancelToken
from agent.log import Masker
from agent.orders import guard as order_guard
from agent.orders.account import Account
from agent.orders.book import FINAL_STATUSES, OrderBook, refs_of
from agent.orders.book import number as _number
from agent.orders.wait import ORDER_WARNING_CODES, Sweeps, _KeyedLocks, order_request

log = agent_log.logger("orders")

# TWS rejecting an order it had accepted (PreSubmitted, then 201): the order's outcome, kept as
# `reason` for the next open-orders and a repeat of its request id.
LATE_REJECTION_CODES = frozenset((201,))
# The answer a cancel waits for: final. PendingCancel (TWS sends it first, from 203 on) is not one:
# the order may still fill before the exchange confirms.
CANCEL_STATUSES = frozenset(("Cancelled", "ApiCancelled"))
# A new order answered with one of these is dead on arrival; TWS sends the reason (201 rejected,
# 202 cancelled by a price check, ...) right after the status, so wait this long for it.
DEAD_ON_ARRIVAL = frozenset(("Cancelled", "ApiCancelled", "Inactive"))
REASON_GRACE_S = 1.0
CANCEL_CONFIRMED = 202  # "Order Canceled - reason:": the answer a cancel asks for
# ibapi's own codes for "an exception while sending this order/cancel" (ibapi.errors FAIL_SEND_ORDER,
# FAIL_SEND_CORDER: ibapi 10.4x catches it inside placeOrder/cancelOrder and reports it as an error
# instead of raising): TWS did not answer, and whether the message reached it is unknown.
IBAPI_SEND_FAILURES = frozenset((512, 515))
RECENTLY_SENT_S = 600.0  # an order sent this recently and not shown by TWS may still be on its way


# How far a place/cancel request got; an unexpected exception is reported by it.
NOT_SENT = "not sent"  # nothing of this attempt was sent to TWS
RECORDED = "recorded"  # the request-id store says "sending"; the order is not sent yet
SENDING = "sending"  # the ibapi call was made: TWS may have the order (or cancel)
ANSWERED = "answered"  # TWS answered and the store has that answer


class IbapiSendError(Exception):
    """ibapi caught an exception while sending an order or cancel and reported it as an error
    (FAIL_SEND_ORDER / FAIL_SEND_CORDER) instead of raising: whether TWS got it is unknown."""


class _Attempt:
    """What the audit line of one place/cancel request will say (decisions: see the module doc)."""

    def __init__(self, action: str, request_id: str, params: Any):
        self.action = action
        self.request_id = request_id
        self.params = params  # as asked; replaced by the checked params once they pass
        self.decision: Optional[str] = None
        self.order_id: Optional[int] = None
        self.stage = NOT_SENT
        self.checked = False  # params passed agent.orders.guard's checks (safe to print)
        self.warning: Optional[str] = None  # what TWS warned about the order (399, 404) with its answer
        self.target: Optional[dict] = None  # a cancel's order as TWS lists it (open-orders row), when known
        self.told = False  # its console line is written (OrderDesk._tell)

    def refuse(self, rule: str) -> AgentError:
        self.decision = f"refused: {rule}"
        return OrderBlocked(rule)

    def decided(self, error: Optional[AgentError]) -> str:
        if self.decision is None or (error and self.decision == "allowed" and self.stage in (NOT_SENT, RECORDED)):
            return f"not sent: {error.code}" if error else "allowed"
        return self.decision


# --- the desk ----------------------------------------------------------------------------------


class OrderDesk:
    """open-orders, place-order, cancel-order for agent.relay.actions; `account` has positions and
    account-summary."""

    def __init__(self, conn, config):
        self.conn = conn
        self.config = config
        self.audit = order_guard.AuditLog(config.audit_log_file, mask=Masker([config.key]))
        self.request_ids = order_guard.RequestIdStore(config.order_ids_file)
        self._request_locks = _KeyedLocks()
        sweeps = Sweeps(conn, lambda: self._timeout)
        self.book = OrderBook(conn, sweeps, lambda: self._timeout)
        self.account = Account(conn, sweeps, lambda: self._timeout)
        conn.add_listener("error", self._on_unrouted_error)
        conn.add_listener("notice", self._on_notice)
        self._described: Dict[int, str] = {}  # order id -> describe_order, for later console lines

    @property
    def _timeout(self) -> float:
        return self.config.request_timeout_s

    def _on_unrouted_error(self, req_id: int, ib_code: int, text: str) -> None:
        """A warning or a rejection of an order after its answer is noted for its request."""
        if ib_code in ORDER_WARNING_CODES or ib_code in LATE_REJECTION_CODES:
            self._order_note(req_id, ib_code, text)

    def _on_notice(self, req_id: int, ib_code: int, text: str) -> None:
        if ib_code in ORDER_WARNING_CODES:  # 399 arrives as a notice, never at the order's handler
            self._order_note(req_id, ib_code, text)

    def _order_note(self, order_id: int, ib_code: int, text: str) -> None:
        """What TWS says about an order outside the wait for its answer (reader thread: no waiting).
        While the order is being placed, its wait takes the warning (agent.ib.requests routes it there);
        after, the request's record keeps it (a warning, or a rejection's reason) for open-orders and
        a repeat of the id."""
        if ib_code in ORDER_WARNING_CODES and self.conn.requests.get(order_id) is not None:
            return
        request_id = self.request_ids.request_for_order(order_id, self.conn.status().get("client_id"))
        if request_id is None:
            return
        rejected = ib_code in LATE_REJECTION_CODES
        if rejected:
            described = self._described.get(order_id)
            log.warning(
                "TWS rejected order %s (%s) after accepting it: %s",
                order_id,
                described or f"request {request_id}",
                text,
            )
        note = {"reason": text, "ib_code": ib_code} if rejected else {"warning": text}

        def write() -> None:  # on a thread of its own: the reader thread never waits on the disk
            try:
                self.request_ids.annotate(request_id, **note)
            except OSError as exc:
                log.error(
                    "Cannot write %s (%s): what TWS said about order %s is only in this log",
                    self.request_ids.path,
                    exc.strerror or exc,
                    order_id,
                )

        threading.Thread(target=write, name="order-note", daemon=True).start()

    # --- orders: reading ---

    def open_orders(self) -> dict:
        """Orders of all clients; `cancellable` marks those this agent can cancel (placed under its
        client id, not final yet), and an order of this agent's requests carries what TWS told it
        after the answer (a warning, or a rejection's reason)."""
        client_id = self.conn.status().get("client_id")
        notes = self.request_ids.notes_by_order_ref()
        orders = self.book.rows()
        for row in orders:
            row["cancellable"] = row["client_id"] == client_id and row["status"] not in FINAL_STATUSES
            row.update(notes.get(row["order_ref"]) or {"warning": None, "reason": None})
        return {"orders": orders}

    def _find_in_tws(
        self, request_id: str, order_id: Optional[int] = None, quantity: Optional[float] = None
    ) -> Optional[dict]:
        """The order TWS holds for this request id, by orderRef ({"order_id", "status"}), or None;
        raises AgentError when TWS cannot be asked (agent.orders.book.OrderBook.find)."""
        found = self.book.find(refs_of(request_id), order_id, quantity)
        return None if found is None else {"order_id": found["order_id"], "status": found["status"]}

    # --- orders: placing and cancelling ---

    def place_order(self, request_id: str, params: dict, cancel: Optional[CancelToken] = None) -> dict:
        attempt = _Attempt("place-order", request_id, params)
        return self._audited(attempt, lambda: self._place(request_id, params, attempt, cancel))

    def _place(self, request_id: str, params: dict, attempt: _Attempt, cancel: Optional[CancelToken]) -> dict:
        order = attempt.params = order_guard.parse_order_params("place-order", params)
        attempt.checked = True
        with self._request_locks.hold(request_id, timeout=3 * self._timeout):
            return self._place_once(request_id, order, attempt, cancel)

    def _audited(self, attempt: _Attempt, work: Callable[[], dict]) -> dict:
        """The one place every place/cancel request ends: one audit line, whatever happened.

        The audit fails closed: when a line cannot be written now, nothing is sent to TWS."""
        try:
            try:
                self.audit.check()
            except order_guard.AuditError as exc:
                raise attempt.refuse(
                    f"{exc}; nothing was sent to TWS. Fix it (AGENT_DATA_DIR, free disk "
                    "space, permissions) and ask again"
                ) from None
            result = work()
        except AgentError as error:
            if error.code == CANCELLED:
                self._remember_cancelled(attempt.action, attempt.request_id, error)
            raise self._tell(attempt, self._audit(attempt, error=error)) from None
        except Exception as exc:  # a bug, or ibapi raising: still an audited, recoverable outcome
            error = self._unexpected(attempt, exc)
            raise self._tell(attempt, self._audit(attempt, error=error, exception=exc.__class__.__name__)) from exc
        self._audit(attempt, status=result["status"])
        if not attempt.told:  # answered without sending (a repeat, found in TWS)
            self._tell(attempt, None, result)
        return result

    def _tell(
        self, attempt: _Attempt, error: Optional[AgentError], result: Optional[dict] = None
    ) -> Optional[AgentError]:
        """The one console line of an order request: the whole order, the decision and the outcome
        (`Order SELL 1 AAPL 20270115 200 C @ 1.25 LMT DAY allowed: order 7 Submitted`). Returns the
        error, marked as told so agent.relay.actions does not say it again."""
        if error is not None and getattr(error, "logged", False):
            return error
        order = attempt.params if attempt.checked else None
        if order is None:
            with contextlib.suppress(Exception):  # a request answered before the desk checked it
                order = order_guard.parse_order_params(attempt.action, attempt.params)
        if attempt.action == "place-order":
            what = "Order (params not valid)"
            with contextlib.suppress(Exception):  # as asked, as far as it reads as an order (the cloud's text)
                what = "Order " + agent_log.printable(agent_log.clip(describe_order(order or attempt.params), 200))
        else:
            order_id = attempt.order_id or (order or {}).get("order_id")
            what = f"Cancel of order {order_id}" if order_id else "Cancel of an order (params not valid)"
            what += f" ({describe_order(attempt.target)})" if attempt.target else ""
        decision = attempt.decided(error)
        if decision.startswith("duplicate"):
            decision = (
                "found in TWS by its orderRef, not placed again"
                if "orderRef" in decision
                else "repeated request id, answered from the first"
            )
        elif decision.startswith("refused"):
            decision = "refused"
        elif decision.startswith("not sent"):
            decision = "not sent"
        elif error is not None:
            decision = "allowed, then failed"
        level = logging.INFO
        if error is None:
            outcome = (
                f"order {result['order_id']} {result['status']}"
                if attempt.action == "place-order"
                else str(result["status"])
            )
            outcome += "".join(
                f"; TWS {word}: {result[key]}"
                for key, word in (("warning", "warns"), ("reason", "rejected it"))
                if result.get(key)
            )
        else:
            ib = f", IB error {error.ib_code}" if error.ib_code is not None else ""
            outcome = f"{error.message} ({error.code}{ib})"
            if error.code not in (CANCELLED, "BUSY"):
                level = logging.WARNING
            error.logged = True  # agent.relay.actions: this is the request's console line
        attempt.told = True
        (log.info if level == logging.INFO else log.warning)("%s %s: %s", what, decision, outcome)
        return error

    def _audit(
        self,
        attempt: _Attempt,
        error: Optional[AgentError] = None,
        status: Optional[str] = None,
        exception: Optional[str] = None,
    ) -> Optional[AgentError]:
        """Writes the line; returns the error to answer (saying so when the line could not be written).
        A success stays a success: the order exists, and the log file holds the line."""
        outcome = order_guard.outcome_of_error(error, exception) if error else {"status": status}
        try:
            self.audit.write(
                attempt.action, attempt.request_id, attempt.params, attempt.decided(error), attempt.order_id, outcome
            )
        except order_guard.AuditError as exc:
            if error is not None:
                answered = AgentError.of(
                    error.code, f"{error.message} (and {exc}: the line is in the agent's log file)", error.ib_code
                )
                answered.logged = getattr(error, "logged", False)
                return answered
        return error

    def audit_unserved(self, action: str, request_id: str, params: Any, error: AgentError) -> AgentError:
        """The audit line of an order request answered before the desk saw it (BUSY when its lane is
        full, CANCELLED before it started, the agent shutting down): the error to answer."""
        attempt = _Attempt(action, request_id, params)
        if error.code == CANCELLED:
            self._remember_cancelled(action, request_id, error)
        return self._tell(attempt, self._audit(attempt, error=error))

    def _remember_cancelled(self, action: str, request_id: str, error: AgentError) -> None:
        """A request the cloud cancelled before anything was sent keeps that answer: a repeat of its id
        gets CANCELLED again, never a late order the user had stopped. A record an earlier attempt
        left (an order that may be in TWS) is never replaced."""
        record = self.request_ids.get(request_id)
        if record and (
            record["state"] not in order_guard.UNFINISHED
            or record["state"] == order_guard.SENDING
            or record.get("maybe_sent", True)
        ):
            return
        self._remember(request_id, order_guard.FAILED, action=action, error=error.to_dict())

    def _unexpected(self, attempt: _Attempt, exc: Exception) -> AgentError:
        """Make an unexpected exception safe to retry, say it on the console in one line (the
        traceback goes to the log file), and turn it into the INTERNAL answer."""
        name = exc.__class__.__name__
        if attempt.action == "place-order":
            kept = self._keep_unknown(attempt, name)
            what, where = self._placing_words(attempt)
            what = f"placing {what}"
            if attempt.stage == NOT_SENT:
                fate = "before the order was sent: nothing reached TWS"
                fate += "; a repeat of this request looks in TWS first" if kept else ""
            elif attempt.stage == RECORDED:
                fate = "before the order was sent: nothing reached TWS; a repeat of this request looks in TWS first"
            elif attempt.stage == SENDING:
                fate = (
                    f"while sending it: it may have reached TWS. Check TWS's orders (and trades) for "
                    f"{where} before placing it by hand; a repeat of this request looks in TWS first "
                    "and never places it twice"
                )
            else:
                record = self.request_ids.get(attempt.request_id) or {}
                fate = (
                    f"after TWS answered ({record.get('status') or record.get('state') or 'see TWS'}); "
                    f"a repeat of this request gets that answer"
                )
        else:
            order_id = attempt.order_id
            what = f"cancelling order {order_id}" if order_id is not None else "cancelling an order"
            if attempt.stage == NOT_SENT:
                fate = "before the cancel was sent: nothing reached TWS"
            elif attempt.stage == ANSWERED:
                fate = "after TWS answered the cancel; open-orders shows the order's state"
            else:
                fate = (
                    f"while sending it: the cancel may have reached TWS. Check order {order_id} in "
                    "TWS's orders; sending the cancel again is safe"
                )
        message = f"unexpected error in the agent ({name}) {what} {fate}."
        log.error("%s %s: %s", attempt.action, attempt.request_id, message, exc_info=exc)
        error = Internal(f"{message} Details are in the agent's log file.")
        error.logged = True  # agent.relay.actions: the console already has this line
        return error

    def _keep_unknown(self, attempt: _Attempt, exception: str) -> bool:
        """Mark the request-id record "unknown" when this attempt, or an earlier one, may have reached
        TWS; a record TWS already answered stays as it is. True when the record is unknown now."""
        record = self.request_ids.get(attempt.request_id)
        if attempt.stage == ANSWERED or (attempt.stage == NOT_SENT and not record):
            return False
        if attempt.stage == NOT_SENT and record["state"] not in order_guard.UNFINISHED:
            return False
        try:
            if attempt.stage == NOT_SENT:  # an earlier attempt's record: what it said
                maybe_sent = record["state"] == order_guard.SENDING or record.get("maybe_sent", True)
            else:  # this attempt's own record
                maybe_sent = attempt.stage == SENDING
            self.request_ids.put(attempt.request_id, order_guard.UNKNOWN, exception=exception, maybe_sent=maybe_sent)
        except Exception as exc:  # it stays "sending": a repeat looks in TWS just the same
            log.error(
                "Cannot write %s (%s): request %s is remembered as still sending",
                self.request_ids.path,
                getattr(exc, "strerror", None) or exc,
                attempt.request_id,
            )
        return True

    @staticmethod
    def _placing_words(attempt: _Attempt) -> Tuple[str, str]:
        """("order 32 SELL 1 AAPL 20300118 150 C @ 2.5", "order 32 with orderRef mat-...") as far as known."""
        order = attempt.params if attempt.checked else {}
        what = "order" if attempt.order_id is None else f"order {attempt.order_id}"
        with contextlib.suppress(Exception):  # e.g. an error before the params were checked
            what += f" {describe_order(order)}"
        where = f"orderRef {order_guard.order_ref_for(attempt.request_id)}"
        if attempt.order_id is not None:
            where = f"order {attempt.order_id} with {where}"
        return what, where

    def _place_once(self, request_id: str, order: dict, attempt: _Attempt, cancel: Optional[CancelToken]) -> dict:
        record = self.request_ids.get(request_id)
        if record and record.get("action", "place-order") != "place-order":
            raise InvalidRequest(
                f"request id {request_id} was used for a {record['action']}; a place-order needs an id of its own",
            )
        if record and record["state"] not in order_guard.UNFINISHED:
            attempt.decision, attempt.order_id = "duplicate", record.get("order_id")
            if record["state"] == order_guard.FAILED:
                raise AgentError.from_dict(record["error"])
            notes = {k: record[k] for k in ("warning", "reason") if record.get(k)}  # what TWS said since
            return dict(
                {"order_id": record["order_id"], "status": self._status_now(request_id, record, order)}, **notes
            )
        rule = policy_refusal(self.config, self.conn, order)
        if rule:
            raise attempt.refuse(rule)
        # No record, an unfinished one, or a store that was lost: TWS may have this order already.
        found = self._look_in_tws(request_id, record, order)
        if found:
            attempt.decision, attempt.order_id = "duplicate: found in TWS by orderRef", found["order_id"]
            self._remember(
                request_id,
                order_guard.PLACED,
                action="place-order",
                order_ref=order_guard.order_ref_for(request_id),
                **found,
            )
            return found
        if record and (record["state"] == order_guard.SENDING or record.get("maybe_sent", True)):
            raise self._cannot_tell(request_id, record, attempt)
        qualified, rule = qualified_refusal(self.config, self.conn, order, self._timeout)
        if rule:
            raise attempt.refuse(rule)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before the order was sent: nothing reached TWS")
        attempt.decision = "allowed"
        attempt.order_id = order_id = self.conn.next_order_id()
        self._described[order_id] = describe_order(order)
        order_ref = order_guard.order_ref_for(request_id)
        try:
            self.request_ids.put(
                request_id,
                order_guard.SENDING,
                action="place-order",
                order_id=order_id,
                order_ref=order_ref,
                client_id=self.conn.status().get("client_id"),
            )
        except OSError as exc:  # without the record, exactly-once cannot be promised: do not send
            raise Internal(
                f"cannot write {self.request_ids.path.name} ({exc.strerror or exc}); the order was not sent"
            ) from None
        attempt.stage = RECORDED
        try:
            status_text = self._send_and_wait(
                order_id,
                "placeOrder",
                (qualified, limit_order(order_ref, order)),
                self._first_status,
                f"order {order_id}",
                attempt,
                dead=DEAD_ON_ARRIVAL,
            )
        except AgentError as error:
            if error.code not in (TIMEOUT, IB_NOT_CONNECTED):  # TWS answered: there is no order
                self._remember(request_id, order_guard.FAILED, error=error.to_dict())
                attempt.stage = ANSWERED
            raise
        notes = {"warning": attempt.warning} if attempt.warning else {}
        self._remember(request_id, order_guard.PLACED, status=status_text, **notes)
        attempt.stage = ANSWERED
        result = dict({"order_id": order_id, "status": status_text}, **notes)
        self._tell(attempt, None, result)  # here, as the order's answer is in: a failure after it keeps it
        return result

    def _look_in_tws(self, request_id: str, record: Optional[dict], order: dict) -> Optional[dict]:
        """_find_in_tws, or a refusal that says what to check when TWS cannot be asked."""
        try:
            return self._find_in_tws(request_id, (record or {}).get("order_id"), order["quantity"])
        except AgentError as error:
            raise AgentError.of(
                error.code,
                f"could not look in TWS for an earlier order of this request "
                f"({error.message}); nothing was placed. Ask again when TWS answers; "
                "before placing it any other way, check TWS's orders and trades for "
                f"orderRef {order_guard.order_ref_for(request_id)}",
                error.ib_code,
            ) from None

    def _status_now(self, request_id: str, record: dict, order: dict) -> Optional[str]:
        """The status TWS gives the order of a request answered before; the recorded one when TWS
        cannot say (not connected, or the order is older than what TWS shows)."""
        try:
            found = self._find_in_tws(request_id, record.get("order_id"), order["quantity"])
        except AgentError:
            found = None
        return (found or {}).get("status") or record.get("status")

    def _cannot_tell(self, request_id: str, record: dict, attempt: _Attempt) -> AgentError:
        """An earlier attempt sent (or may have sent) this order, and TWS does not show it: never place
        it again under this id. Recently sent: TWS may still be holding it (a precaution dialog)."""
        where = f"orderRef {order_guard.order_ref_for(request_id)}"
        if record.get("order_id") is not None:
            where = f"order {record['order_id']} with {where}"
        attempt.order_id = record.get("order_id")
        age = max(0.0, time.time() - record["time"])
        if age < RECENTLY_SENT_S:
            return RequestTimeout(
                f"an earlier attempt of this request sent {where} to TWS {age:.0f} s ago "
                "and TWS does not show it yet (TWS may be holding it behind a precaution "
                "dialog); nothing new was placed. Check TWS; asking again with this id is "
                "safe: it is never placed twice",
            )
        return attempt.refuse(
            f"cannot tell whether {where} reached TWS: an earlier attempt of this request "
            "sent it (or may have), and TWS shows no such order among its open orders, today's "
            "completed orders or the executions of the last 7 days. Nothing was placed. Check "
            "TWS's orders and trades; if it is not there, place it again under a new request id"
        )

    def _remember(self, request_id: str, state: str, **fields) -> None:
        """The outcome, once TWS answered. Failing to write it must not hide that answer: the record
        stays "sending", so a repeat of this id looks the order up in TWS before placing anything."""
        try:
            self.request_ids.put(request_id, state, **fields)
        except OSError as exc:
            log.error(
                "Cannot write %s (%s): request %s is remembered as still sending",
                self.request_ids.path,
                exc.strerror or exc,
                request_id,
            )

    @staticmethod
    def _first_status(events: List[Tuple[str, tuple]]) -> Optional[str]:
        for name, args in events:
            if name == "orderStatus":
                return args[1]
            if name == "openOrder":
                return args[3].status
        return None

    def _send_and_wait(
        self,
        order_id: int,
        request: str,
        args: tuple,
        answer: Callable[[List[Tuple[str, tuple]]], Optional[str]],
        what: str,
        attempt: _Attempt,
        success_codes: Iterable[int] = (),
        dead: Iterable[str] = (),
    ) -> str:
        """Send one order message and wait for the first answer that `answer` turns into a status;
        a `dead` status followed by TWS's reason raises that reason."""
        pending = order_request(what, lambda name, a: answer([(name, a)]) is not None, success_codes)
        if not self.conn.requests.add(order_id, pending):
            raise InvalidRequest(
                f"order {order_id} is being placed or cancelled right now; ask again when that has finished",
            )
        try:
            attempt.stage = SENDING
            self.conn.send(request, order_id, *args)
            status = answer(pending.wait(self._timeout))
            reason = pending.later_error(REASON_GRACE_S) if status in dead else None
        except AgentError as error:
            if error.ib_code in IBAPI_SEND_FAILURES:  # not TWS's answer: ibapi hit an exception sending it
                raise IbapiSendError(f"ibapi error {error.ib_code}: {error.message}") from None
            raise
        finally:
            self.conn.requests.remove(order_id, pending)
        if reason is not None:
            raise reason
        attempt.warning = pending.warning()
        return status

    def cancel_order(self, request_id: str, params: dict, cancel: Optional[CancelToken] = None) -> dict:
        attempt = _Attempt("cancel-order", request_id, params)
        return self._audited(attempt, lambda: self._cancel_checked(params, attempt, cancel))

    def _cancel_checked(self, params: dict, attempt: _Attempt, cancel: Optional[CancelToken]) -> dict:
        attempt.params = order_guard.parse_order_params("cancel-order", params)
        attempt.checked = True
        attempt.order_id = attempt.params["order_id"]
        with self._request_locks.hold(attempt.request_id, timeout=3 * self._timeout):
            return self._cancel(attempt.order_id, attempt, cancel)

    def _cancel(self, order_id: int, attempt: _Attempt, cancel: Optional[CancelToken] = None) -> dict:
        request_id = attempt.request_id
        record = self.request_ids.get(request_id)
        if record and (record.get("action") != "cancel-order" or record.get("order_id") != order_id):
            used = (
                f"a cancel-order of order {record.get('order_id')}"
                if record.get("action") == "cancel-order"
                else f"a {record.get('action') or 'place-order'}"
            )
            raise InvalidRequest(
                f"request id {request_id} was used for {used}; this cancel-order needs an id of its own",
            )
        if record and record["state"] not in order_guard.UNFINISHED:  # answered before: the same answer
            attempt.decision = "duplicate"
            if record["state"] == order_guard.FAILED:
                raise AgentError.from_dict(record["error"])
            return {"order_id": order_id, "status": record["status"]}
        # No record, or one left unfinished: sending the cancel (again) is safe.
        rule = order_guard.orders_off_refusal(self.config)
        if rule:
            raise attempt.refuse(rule)
        status = self.conn.status()
        if not status.get("connected"):
            raise IbNotConnected("TWS is not connected; the cancel was not sent")
        rule = order_guard.account_refusal(self.config, status, None)
        if rule:
            raise attempt.refuse(rule)
        attempt.target = self._check_cancellable(order_id, status.get("client_id"))
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before the cancel was sent: nothing reached TWS")
        attempt.decision = "allowed"
        try:
            self.request_ids.put(request_id, order_guard.SENDING, action="cancel-order", order_id=order_id)
        except OSError as exc:
            raise Internal(
                f"cannot write {self.request_ids.path.name} ({exc.strerror or exc}); the cancel was not sent"
            ) from None
        attempt.stage = RECORDED
        try:
            status_text = self._send_and_wait(
                order_id,
                "cancelOrder",
                (OrderCancel(),),
                self._cancel_status,
                f"the cancel of order {order_id}",
                attempt,
                success_codes=(CANCEL_CONFIRMED,),
            )
        except AgentError as error:
            if error.code not in (TIMEOUT, IB_NOT_CONNECTED):
                self._remember(request_id, order_guard.FAILED, error=error.to_dict())
            raise
        self._remember(request_id, order_guard.PLACED, status=status_text)
        attempt.stage = ANSWERED
        result = {"order_id": order_id, "status": status_text}
        self._tell(attempt, None, result)
        return result

    def _check_cancellable(self, order_id: int, client_id: Optional[int]) -> Optional[dict]:
        """Order ids are unique per client id, and TWS cancels only orders of the client that asks:
        an order id open under other clients only is refused here, naming who placed it. One not
        open at all is sent, and TWS answers (161 not cancellable, 10147 not found)."""
        try:
            rows = [row for row in self.book.rows() if row["order_id"] == order_id]
        except AgentError as error:
            raise AgentError.of(
                error.code,
                f"could not look in TWS for order {order_id} ({error.message}); the cancel was not sent",
                error.ib_code,
            ) from None
        if rows and all(row["client_id"] != client_id for row in rows):
            placed_by = " and ".join(sorted({str(row["client_id"]) for row in rows}))
            raise InvalidRequest(
                f"params.order_id: order {order_id} was placed by client id {placed_by}, "
                f"and this agent (client id {client_id}) can only cancel orders placed "
                "under its own client id; cancel it in TWS or from the program that "
                "placed it. The cancel was not sent",
            )
        return next((row for row in rows if row["client_id"] == client_id), None)  # for the console line

    @staticmethod
    def _cancel_status(events: List[Tuple[str, tuple]]) -> Optional[str]:
        for name, args in events:
            if name == "orderStatus" and args[1] in CANCEL_STATUSES:
                return args[1]
            if name == "error" and args[0] == CANCEL_CONFIRMED:
                return "Cancelled"
        return None


# The pieces of placing an order that order_preview uses too.


def policy_refusal(config, conn, order: dict) -> Optional[str]:
    """The local policy's rules that need no contract details (DESIGN.md 5.3), for place-order and
    preview-order alike: the caps at the standard multiplier, then the account and its type (an order
    naming none takes the session's only one). The rule that refuses, or None; IbNotConnected when
    there is no TWS to tell the account."""
    rule = order_guard.order_refusal(config, order, order_guard.STANDARD_MULTIPLIER[order["contract"]["sec_type"]])
    if rule:
        return rule
    status = conn.status()
    if not status.get("connected"):
        raise IbNotConnected("TWS is not connected; the order was not sent")
    order["account"] = order["account"] or sole_account(status)
    return order_guard.account_refusal(config, status, order["account"])


def qualified_refusal(config, conn, order: dict, timeout: float) -> Tuple[Contract, Optional[str]]:
    """The contract TWS knows for the order, and the caps again at its real multiplier (an adjusted
    option's deliverable is not 100 shares): the rule that refuses, or None."""
    spec = order["contract"]
    contract = qualify_contract(conn, spec, timeout)
    multiplier = _number(contract.multiplier) or order_guard.STANDARD_MULTIPLIER[spec["sec_type"]]
    return contract, order_guard.order_refusal(config, order, multiplier)


def sole_account(status: dict) -> Optional[str]:
    """The account an order names none of: the session's only one (several: the order must say)."""
    accounts = status.get("accounts") or []
    if len(accounts) > 1:
        raise InvalidRequest(
            f"params.account: is required: this TWS session has several accounts ({', '.join(accounts)})",
        )
    return accounts[0] if accounts else None


def qualify_contract(conn, spec: dict, timeout: float) -> Contract:
    """The one contract IB knows for this spec (exact conId, SMART); several or none is an error."""
    query = Contract()
    query.symbol, query.secType, query.exchange, query.currency = spec["ticker"], spec["sec_type"], "SMART", "USD"
    if spec["sec_type"] == "OPT":
        query.lastTradeDateOrContractMonth = spec["expiration"]
        query.strike, query.right = float(spec["strike"]), spec["right"]
        query.tradingClass = spec["trading_class"] or ""
    rows = conn.call(
        "reqContractDetails",
        conn.next_req_id(),
        query,
        rows=("contractDetails",),
        end="contractDetailsEnd",
        timeout=timeout,
    )
    matches = {row[0].contract.conId: row[0].contract for row in rows}
    described = describe_contract(spec)
    if not matches:
        raise NoSecurityDefinition(f"IB has no contract {described}")
    if len(matches) > 1:
        classes = sorted({f"{c.tradingClass or c.symbol} x{c.multiplier or 1}" for c in matches.values()})
        raise InvalidRequest(
            f"params.contract: ambiguous: {len(matches)} contracts match "
            f"{described} ({', '.join(classes)}); name contract.trading_class",
        )
    contract = next(iter(matches.values()))
    contract.exchange = "SMART"
    return contract


def limit_order(order_ref: str, order: dict) -> Order:
    """The ibapi Order of checked place-order params (a limit order, transmitted)."""
    ib_order = Order()
    ib_order.action = order["action"]
    ib_order.totalQuantity = Decimal(order["quantity"])
    ib_order.orderType = "LMT"
    ib_order.lmtPrice = float(order["limit_price"])
    ib_order.tif = order["tif"]
    ib_order.orderRef = order_ref
    ib_order.account = order["account"] or ""
    ib_order.transmit = True
    return ib_order


def describe_contract(spec: dict) -> str:
    if spec["sec_type"] == "OPT":
        return f"{spec['ticker']} {spec['expiration']} {spec['strike']:g} {spec['right']}"
    return f"{spec['ticker']} ({'stock' if spec['sec_type'] == 'STK' else spec['sec_type']})"


def _price_text(price: Any) -> str:
    """1.25 -> "1.25", 100.0 -> "100": a price as a trader writes it."""
    return f"{float(price):f}".rstrip("0").rstrip(".")


def describe_order(order: dict) -> str:
    """The one console description of an order: `SELL 1 AAPL 20270115 200 C @ 1.25 LMT DAY` (checked
    place-order params, or an open-orders row)."""
    price = order.get("limit_price")
    text = f"{order['action']} {order['quantity']:g} {describe_contract(order['contract'])}"
    text += f" @ {_price_text(price)}" if price is not None else ""
    return text + " ".join(["", *(str(order[k]) for k in ("order_type", "tif") if order.get(k))])
