"""What TWS shows of orders (DESIGN.md 4 `open-orders`, 5.3): IB's values turned into relay values,
the rows of open and completed orders, and the lookup of a request's order by its orderRef.

The lookup is what keeps placement exactly-once when the agent's own record is missing or
unfinished (agent.orders.desk): open orders of all clients, today's completed orders, then the executions
of the last LOOKBACK_DAYS days, each matched by orderRef. It only reads; nothing here sends an
order or a cancel.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ibapi.const import UNSET_DOUBLE
from ibapi.contract import Contract
from ibapi.execution import ExecutionFilter
from ibapi.order import Order
from ibapi.server_versions import MIN_SERVER_VER_PARAMETRIZED_DAYS_OF_EXECUTIONS

from agent.ib.requests import ORDERS
from agent.orders import guard as order_guard

LOOKBACK_DAYS = 7  # executions asked for when looking for a request's order in TWS
# Statuses after which an order can no longer be cancelled (TWS answers a cancel with 161). An
# Inactive order (rejected after it was accepted) is still listed and can still be cancelled.
FINAL_STATUSES = frozenset(("Filled", "Cancelled", "ApiCancelled"))


# --- IB values -> relay values (sentinels -> None) ---------------------------------------------


def number(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or abs(value) >= UNSET_DOUBLE:
        return None
    return value


def quantity(value: Any) -> Optional[float]:
    value = number(value)
    if value is None or abs(value) >= 2**63 - 1:
        return None
    return int(value) if value == int(value) else value


def _expiration(contract: Contract) -> Optional[str]:
    """The expiration of anything that expires (options, futures, futures options) as TWS gives it:
    YYYYMMDD, or YYYYMM for a contract month; a time TWS may append is dropped."""
    value = (contract.lastTradeDateOrContractMonth or "").strip() or (
        getattr(contract, "lastTradeDate", "") or ""
    ).strip()
    return value.split()[0] if value else None


def contract_dict(contract: Contract) -> dict:
    is_option = contract.secType in ("OPT", "FOP")
    multiplier = quantity(contract.multiplier) if contract.multiplier else None
    return {
        "con_id": contract.conId or None,
        "ticker": contract.symbol,
        "sec_type": contract.secType,
        "expiration": _expiration(contract),
        "strike": number(contract.strike) if is_option else None,
        "right": ({"CALL": "C", "PUT": "P"}.get(contract.right, contract.right) or None) if is_option else None,
        "multiplier": 1 if multiplier is None and contract.secType == "STK" else multiplier,
        "currency": contract.currency or None,
        "trading_class": contract.tradingClass or None,
    }


def order_row(order_id: Optional[int], contract: Contract, order: Order, state) -> dict:
    return {
        "order_id": order_id,
        "perm_id": order.permId or None,
        "client_id": order.clientId,
        "account": order.account or None,
        "contract": contract_dict(contract),
        "action": order.action,
        "quantity": quantity(order.totalQuantity),
        "order_type": order.orderType,
        "limit_price": number(order.lmtPrice) or None,  # 0: no limit
        "tif": order.tif or None,
        "status": state.status or None,
        "filled": None,
        "remaining": None,
        "avg_fill_price": None,
        "order_ref": order.orderRef or None,
    }


class OrderBook:
    """Reads TWS's orders through the id-less sweeps (agent.orders.wait.Sweeps: one of a kind at a time);
    conn is the IBConnection, timeout() the seconds to wait."""

    def __init__(self, conn, sweeps, timeout: Callable[[], float]):
        self.conn = conn
        self._sweeps = sweeps
        self._timeout = timeout

    def rows(self, completed: bool = False) -> List[dict]:
        """Orders of all clients (reqAllOpenOrders), or today's completed ones (reqCompletedOrders)."""
        request, end = (
            ("reqCompletedOrders", "completedOrdersEnd") if completed else ("reqAllOpenOrders", "openOrderEnd")
        )
        with self._sweeps.open(ORDERS, request, end) as sweep:
            self.conn.send(request, *((False,) if completed else ()))
            events = sweep.wait(self._timeout())
        orders: Dict[Any, dict] = {}
        statuses: Dict[Any, tuple] = {}
        for name, args in events:
            if name == "openOrder":
                order_id, contract, order, state = args
                orders[order.permId or (order.clientId, order_id)] = order_row(order_id, contract, order, state)
            elif name == "completedOrder":
                contract, order, state = args
                orders[order.permId or id(order)] = order_row(order.orderId or None, contract, order, state)
            elif name == "orderStatus":
                order_id, status, filled, remaining, avg_price, perm_id, _parent, _last, client_id = args[:9]
                statuses[perm_id or (client_id, order_id)] = (status, filled, remaining, avg_price)
        for key, (status, filled, remaining, avg_price) in statuses.items():
            row = orders.get(key)
            if row is not None:
                row.update(
                    status=status,
                    filled=quantity(filled),
                    remaining=quantity(remaining),
                    avg_fill_price=number(avg_price) or None,
                )
        return list(orders.values())

    def executions(self) -> List[Tuple[Contract, Any]]:
        """Executions of the last LOOKBACK_DAYS days (reqExecutions' lastNDays, server version >= 200;
        an older TWS can only give today's)."""
        execution_filter = ExecutionFilter()
        if (self.conn.status().get("server_version") or 0) >= MIN_SERVER_VER_PARAMETRIZED_DAYS_OF_EXECUTIONS:
            execution_filter.lastNDays = LOOKBACK_DAYS
        return self.conn.call(
            "reqExecutions",
            self.conn.next_req_id(),
            execution_filter,
            rows=("execDetails",),
            end="execDetailsEnd",
            timeout=self._timeout(),
        )

    def find(
        self, refs: Iterable[str], order_id: Optional[int] = None, ordered: Optional[float] = None
    ) -> Optional[dict]:
        """The row of the order TWS holds with one of these orderRefs: among open orders, today's
        completed orders, then the executions of the last 7 days (an order filled on an earlier day:
        a row of order_id and status only). Raises AgentError when TWS cannot be asked; None when it
        has no such order."""
        refs = set(refs)
        for completed in (False, True):
            for row in self.rows(completed):
                if row["order_ref"] in refs:
                    return dict(row, order_id=row["order_id"] or order_id)
        filled: Dict[str, float] = {}
        for _contract, execution in self.executions():
            if execution.orderRef in refs:
                order_id = execution.orderId or order_id
                filled[execution.execId] = number(execution.shares) or 0.0
        if not filled:
            return None
        # Not open, not completed today, but filled on an earlier day: done, fully or in part.
        done = ordered is None or sum(filled.values()) >= ordered
        return {"order_id": order_id, "status": "Filled" if done else "Cancelled"}


def refs_of(request_id: str) -> Tuple[str, str]:
    """The orderRefs an order of this request may carry: the derived one, and the id itself (orders
    placed by agents before the derivation)."""
    return order_guard.order_ref_for(request_id), request_id
