"""The account reads (DESIGN.md 4 `positions`, `account-summary`): what TWS holds and what the
account is worth. They only read; nothing here sends an order. One position row is built in
position_row, and only there.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Tuple

from ibapi.contract import Contract

from agent.errors import AgentError
from agent.ib.requests import POSITIONS
from agent.orders.book import contract_dict, number, quantity
from agent.orders.portfolio import NO_PNL, portfolio_values

SUMMARY_TAGS = {
    "NetLiquidation": "net_liquidation",
    "TotalCashValue": "total_cash",
    "BuyingPower": "buying_power",
    "AvailableFunds": "available_funds",
    "ExcessLiquidity": "excess_liquidity",
}
POSITION_CONTRACT_FIELDS = ("con_id", "ticker", "sec_type", "expiration", "strike", "right", "multiplier")


def position_row(account: str, contract: Contract, position, avg_cost) -> dict:
    """One `positions` row from TWS's position callback."""
    fields = contract_dict(contract)
    # TWS's avgCost is per contract (an option's includes its multiplier: 412.37 for
    # 4.1237 a share); DESIGN.md 4 answers per share / unit of the underlying.
    avg_cost, multiplier = number(avg_cost), fields["multiplier"]
    if avg_cost is not None and multiplier:
        avg_cost = round(avg_cost / multiplier, 10)
    return dict(
        {k: fields[k] for k in POSITION_CONTRACT_FIELDS},
        account=account,
        quantity=quantity(position),
        avg_cost=avg_cost,
    )


class Account:
    """positions and account-summary for agent.relay.actions. conn is the IBConnection, sweeps the
    agent.orders.wait.Sweeps the desk shares, timeout() the seconds to wait."""

    def __init__(self, conn, sweeps, timeout: Callable[[], float]):
        self.conn = conn
        self._sweeps = sweeps
        self._timeout = timeout
        self._summary_lock = threading.Lock()

    def positions(self) -> dict:
        with self._sweeps.open(POSITIONS, "reqPositions", "positionEnd") as sweep:
            self.conn.send("reqPositions")
            try:
                events = sweep.wait(self._timeout())
            finally:
                with contextlib.suppress(AgentError):
                    self.conn.send("cancelPositions")
        latest: Dict[Tuple[str, int], dict] = {}  # TWS may repeat a position while we listen
        for name, args in events:
            if name == "position":
                account, contract = args[0], args[1]
                latest[(account, contract.conId)] = position_row(*args)
        held = {key: row for key, row in latest.items() if row["quantity"]}  # 0 = closed today
        accounts = [account for account, _ in held]
        values = portfolio_values(self.conn, self._sweeps, accounts, self._timeout())  # v1.1 market value, P&L
        return {"positions": [dict(row, **values.get(key, NO_PNL)) for key, row in held.items()]}

    def summary(self) -> dict:
        with self._summary_lock:  # TWS allows two account-summary subscriptions at once
            req_id = self.conn.next_req_id()
            try:
                rows = self.conn.call(
                    "reqAccountSummary",
                    req_id,
                    "All",
                    ",".join(SUMMARY_TAGS),
                    rows=("accountSummary",),
                    end="accountSummaryEnd",
                    timeout=self._timeout(),
                )
            finally:
                with contextlib.suppress(AgentError):
                    self.conn.send("cancelAccountSummary", req_id)
        accounts: Dict[str, dict] = {}
        for account, tag, value, currency in rows:
            if tag not in SUMMARY_TAGS:
                continue
            entry = accounts.setdefault(account, dict.fromkeys(list(SUMMARY_TAGS.values()) + ["currency"]))
            entry[SUMMARY_TAGS[tag]] = number(value)
            entry["currency"] = entry["currency"] or currency or None
        return {"accounts": accounts}
