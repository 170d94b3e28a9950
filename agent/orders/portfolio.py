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
the reads are serialised here (the agent has no other user of reqAccountUpdates).

IB's unset values (Double.MAX_VALUE) become None (book.number); what TWS sent is kept as sent:
the market price per share / unit of the underlying (as avg_cost), the market value and P&L per
position in the account's currency.
"""

from __future__ import annotations

import threading
from typing import Dict, Iterable, Optional, Tuple

from agent import log as agent_log
from agent.errors import AgentError, IbNotConnected, RequestTimeout
from agent.orders.book import number

log = agent_log.logger("orders")

PNL_FIELDS = ("market_price", "market_value", "unrealized_pnl", "realized_pnl")
NO_PNL = dict.fromkeys(PNL_FIELDS)  # a position whose account's portfolio TWS did not give
_subscription = threading.Lock()  # TWS: one reqAccountUpdates subscription per client at a time
_warned: set = set()  # accounts whose failed read was logged as a warning (once each)


class _Download:
    """Collects one account's updatePortfolio rows up to its accountDownloadEnd (reader thread)."""

    def __init__(self, account: str):
        self.account = account
        self.rows: Dict[int, dict] = {}
        self.done = threading.Event()
        self.lost = False

    def on_portfolio(
        self, contract, _position, market_price, market_value, _avg_cost, unrealized, realized, account_name
    ) -> None:
        if account_name == self.account:
            self.rows[contract.conId] = {
                "market_price": number(market_price),
                "market_value": number(market_value),
                "unrealized_pnl": number(unrealized),
                "realized_pnl": number(realized),
            }

    def on_end(self, account_name: str) -> None:
        if account_name == self.account:
            self.done.set()

    def on_disconnected(self) -> None:
        self.lost = True
        self.done.set()


def read_account(conn, account: str, timeout: float) -> Dict[int, dict]:
    """{con_id: PNL_FIELDS} of one account's portfolio. Raises AgentError (TIMEOUT, IB_NOT_CONNECTED)."""
    download = _Download(account)
    listeners = (
        ("updatePortfolio", download.on_portfolio),
        ("accountDownloadEnd", download.on_end),
        ("disconnected", download.on_disconnected),
    )
    with _subscription:
        for name, fn in listeners:
            conn.add_listener(name, fn)
        try:
            conn.send("reqAccountUpdates", True, account)
            try:
                if not download.done.wait(timeout):
                    raise RequestTimeout(f"TWS sent no portfolio of {account} within {timeout:g} s")
                if download.lost:
                    raise IbNotConnected("the TWS connection was lost while reading the portfolio")
            finally:
                if not download.lost:
                    try:
                        conn.send("reqAccountUpdates", False, account)
                    except AgentError:
                        pass  # gone with the connection: TWS drops the subscription with it
        finally:
            for name, fn in listeners:
                conn.remove_listener(name, fn)
    return dict(download.rows)


def portfolio_values(conn, accounts: Iterable[str], timeout: float) -> Dict[Tuple[str, int], dict]:
    """{(account, con_id): PNL_FIELDS} for every account that TWS gave its portfolio; an account whose
    read failed is left out (its positions answer with NO_PNL) and logged, as a warning once."""
    values: Dict[Tuple[str, int], dict] = {}
    for account in dict.fromkeys(accounts):
        try:
            rows: Optional[Dict[int, dict]] = read_account(conn, account, timeout)
        except AgentError as exc:
            level = "debug" if account in _warned else "warning"
            _warned.add(account)
            getattr(log, level)("No market value or P&L for the positions of %s: %s", account, exc.message)
            continue
        values.update({(account, con_id): row for con_id, row in rows.items()})
    return values
