"""preview-order (DESIGN.md 4, v1.1): what an order would cost and do to the account's margin,
without placing it.

The same params as place-order, checked the same way (agent.orders.guard), then the local policy exactly
as place-order applies it (ALLOW_ORDERS, the quantity cap, the notional cap with the standard and
then the qualified multiplier, the paper/live and account rules): a refusal answers
allowed:false with the rule in blocked_by, and TWS is not asked. Otherwise TWS's what-if:
placeOrder with order.whatIf set, which TWS answers with one openOrder whose OrderState carries
the commission and the margins before, change and after (IB's "Checking Margin Changes"); a what-if
books nothing at TWS. TWS refusing it (201, 110, Read-Only API...) is the usual error answer.

It is a read: no request-id record (a repeat asks again), and a what-if order carries no orderRef,
so no lookup of a request's order can ever find it. It is audited like an order, fail closed:
when the audit log cannot be written nothing is sent to TWS (ORDER_BLOCKED), and a preview whose
line could not be written is not answered with its figures. Decisions on its audit line:
"preview" (TWS was asked), "refused: <rule>", "not sent: <code>" (stopped before: bad params,
TWS not connected, no such contract...).
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from agent import log as agent_log
from agent.errors import (
    CANCELLED,
    AgentError,
    Cancelled,
    Internal,
    OrderBlocked,
)
from agent.ib.requests import CancelToken
from agent.orders import guard as order_guard
from agent.orders.book import number
from agent.orders.desk import describe_order, limit_order, policy_refusal, qualified_refusal

log = agent_log.logger("orders")

ACTION = "preview-order"
# OrderState fields (ibapi) -> answer fields. Margins come as text (a Java double, "" or
# Double.MAX_VALUE when TWS has none), the commission as a float (UNSET_DOUBLE when none): number()
# turns every unset form into null.
STATE_FIELDS = {
    "commission": "commissionAndFees",
    "init_margin_change": "initMarginChange",
    "maint_margin_change": "maintMarginChange",
    "equity_with_loan_change": "equityWithLoanChange",
    "init_margin_after": "initMarginAfter",
    "maint_margin_after": "maintMarginAfter",
}


def blocked(rule: str) -> dict:
    return dict(dict.fromkeys(list(STATE_FIELDS) + ["commission_currency", "warning"]), allowed=False, blocked_by=rule)


def answer_of(state) -> dict:
    """The preview answer of a what-if openOrder's OrderState."""
    answer = {field: number(getattr(state, name, None)) for field, name in STATE_FIELDS.items()}
    answer.update(
        allowed=True,
        blocked_by=None,
        commission_currency=state.commissionAndFeesCurrency or None,
        warning=(getattr(state, "warningText", "") or "").strip() or None,
    )
    return answer


class _Preview:
    """One preview request: what its audit line says."""

    def __init__(self, request_id: str, params: Any):
        self.request_id = request_id
        self.params = params
        self.decision: Optional[str] = None  # None until decided: "not sent: <code>" on an error


def preview_order(desk, request_id: str, params: Any, cancel: Optional[CancelToken] = None) -> dict:
    """The preview-order action, on the desk's connection, config and audit log."""
    preview = _Preview(request_id, params)
    try:
        try:
            desk.audit.check()
        except order_guard.AuditError as exc:
            preview.decision = f"refused: {exc}"
            raise OrderBlocked(f"{exc}; nothing was sent to TWS. Fix it and ask again") from None
        result = _preview(desk, preview, cancel)
        _audit(desk, preview, result)
    except AgentError as error:
        _audit(desk, preview, order_guard.outcome_of_error(error), error)
        _tell(preview, f"{error.message} ({error.code})", warn=error.code != CANCELLED)
        error.logged = True  # agent.relay.actions: this is the request's console line
        raise
    except Exception as exc:  # a bug, or ibapi raising: still audited; a what-if places nothing either way
        name = exc.__class__.__name__
        log.error("preview-order %s: unexpected error (%s)", request_id, name, exc_info=exc)
        error = Internal(
            f"unexpected error in the agent ({name}) previewing the order; nothing was placed. "
            "Details are in the agent's log file.",
        )
        _audit(desk, preview, order_guard.outcome_of_error(error, name), error)
        error.logged = True
        raise error from exc
    _tell(preview, _summary(result))
    return result


def _preview(desk, preview: _Preview, cancel: Optional[CancelToken]) -> dict:
    order = preview.params = order_guard.parse_order_params("place-order", preview.params)
    config, conn = desk.config, desk.conn
    rule = policy_refusal(config, conn, order)  # the same rules, in the same order, as place-order
    if rule:
        return _refused(preview, rule)
    timeout = config.request_timeout_s
    contract, rule = qualified_refusal(config, conn, order, timeout)
    if rule:
        return _refused(preview, rule)
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled before TWS was asked")
    what_if = limit_order("", order)  # no orderRef: no lookup of a request's order can match it
    what_if.whatIf = True
    preview.decision = "preview"
    order_id = conn.next_order_id()  # TWS wants an order id for it; nothing is booked under it
    rows = conn.call("placeOrder", order_id, contract, what_if, rows=("openOrder",), end="openOrder", timeout=timeout)
    _contract, answered, state = rows[-1]
    if not answered.whatIf:  # never: TWS answers a what-if with a what-if. Say so rather than guess
        raise Internal(f"TWS answered the what-if order {order_id} as a real order; check TWS's orders")
    return answer_of(state)


def _refused(preview: _Preview, rule: str) -> dict:
    preview.decision = f"refused: {rule}"
    return blocked(rule)


def _audit(desk, preview: _Preview, outcome: dict, error: Optional[AgentError] = None) -> None:
    """The preview's audit line; one that cannot be written fails a preview that had not failed."""
    decision = preview.decision or f"not sent: {error.code}"  # "preview": TWS was asked (outcome: its answer)
    try:
        desk.audit.write(ACTION, preview.request_id, preview.params, decision, None, outcome)
    except order_guard.AuditError as exc:
        if error is None:
            raise OrderBlocked(f"{exc}; the preview's figures are not given without it") from None


def _summary(result: dict) -> str:
    if not result["allowed"]:
        return f"refused: {result['blocked_by']}"
    figures = [
        f"{label} {result[field]:g}"
        for field, label in (("commission", "commission"), ("init_margin_change", "initial margin change"))
        if result[field] is not None
    ]
    return (
        "allowed"
        + (": " + ", ".join(figures) if figures else "")
        + (f"; TWS warns: {result['warning']}" if result["warning"] else "")
    )


def _tell(preview: _Preview, outcome: str, warn: bool = False) -> None:
    """The console line: `Preview SELL 1 AAPL 20270115 200 C @ 1.25 LMT DAY: allowed: commission 0.65`."""
    what = "Preview (params not valid)"
    with contextlib.suppress(Exception):  # as asked, as far as it reads as an order (the cloud's text)
        what = "Preview " + agent_log.printable(agent_log.clip(describe_order(preview.params), 200))
    (log.warning if warn else log.info)("%s: %s", what, agent_log.printable(outcome))
