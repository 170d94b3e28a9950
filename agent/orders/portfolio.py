"""Market value and P&L of the positions (DESIGN.md 4 `positions`, v1.1): TWS's portfolio rows.

Source: the account download of reqAccountUpdates(True, account), read once per account and
unsubscribed at accountDownloadEnd. Chosen over reqPnLSingle because, for a one-shot read:
- one request per account answers every position, with an end marker (accountDownloadEnd) to stop
  at; reqPnLSingle needs a subscription per (account, conId) and has no end: each would be waited
  for until its first update and cancelled, one message pair per position;
- updatePortfolio carries the market price beside the market value and the unrealized and realized
  P&L; pnlSingle has no price;
- it is what TWS fills even where P&L subscriptions are not kept (and the fake serves it as TWS does).
Its limit: TWS keeps one account-updates subscription per client, a new one replacing the last, so
the reads are serialised (agent.orders.wait.Sweeps) (the agent has no other user of reqAccountUpdates).

IB's unset values (Double.MAX_VALUE) become None (book.number); what TWS sent is kept as sent:
the market price per share / unit of the underlying (as avg_cost), the market value and P&L per
position in the account's currency.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional, Tuple

from agent import log as agent_log
from agent.errors import AgentError
from agent.ib.requests import PORTFOLIO
from agent.orders.book import number

log = agent_log.logger("orders")

PNL_FIELDS = ("market_price", "market_value", "unrealized_pnl", "realized_pnl")
NO_PNL = dict.fromkeys(PNL_FIELDS)  # a position whose account's portfolio TWS did not give
_warned: set = set()  # accounts whose failed read was logged as a warning (once each)


def _pnl(row: tuple) -> dict:
    """PNL_FIELDS of one updatePortfolio (contract, position, price, value, avg cost, unrealized, realized, account)."""
    _contract, _position, market_price, market_value, _avg_cost, unrealized, realized, _account = row
    return {
        "market_price": number(market_price),
        "market_value": number(market_value),
        "unrealized_pnl": number(unrealized),
        "realized_pnl": number(realized),
    }


def read_account(conn, sweeps, account: str, timeout: float) -> Dict[int, dict]:
    """{con_id: PNL_FIELDS} of one account's portfolio: the id-less PORTFOLIO sweep (one at a time:
    TWS keeps one reqAccountUpdates subscription per client). Raises AgentError (TIMEOUT,
    IB_NOT_CONNECTED)."""
    with sweeps.open(PORTFOLIO, "reqAccountUpdates", "accountDownloadEnd", (account,)) as download:
        conn.send("reqAccountUpdates", True, account)
        try:
            events = download.wait(timeout)
        finally:
            with contextlib.suppress(AgentError):  # gone with the connection: TWS drops it with it
                conn.send("reqAccountUpdates", False, account)
    return {args[0].conId: _pnl(args) for name, args in events if name == "updatePortfolio" and args[7] == account}


def portfolio_values(conn, sweeps, accounts: Iterable[str], timeout: float) -> Dict[Tuple[str, int], dict]:
    """{(account, con_id): PNL_FIELDS} for every account that TWS gave its portfolio; an account whose
    read failed is left out (its positions answer with NO_PNL) and logged, as a warning once."""
    values: Dict[Tuple[str, int], dict] = {}
    for account in dict.fromkeys(accounts):
        try:
            rows: Optional[Dict[int, dict]] = read_account(conn, sweeps, account, timeout)
        except AgentError as exc:
            level = "debug" if account in _warned else "warning"
            _warned.add(account)
            getattr(log, level)("No market value or P&L for the positions of %s: %s", account, exc.message)
            continue
        values.update({(account, con_id): row for con_id, row in rows.items()})
    return values
