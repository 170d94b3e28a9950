"""The fake TWS's accounts: the order book (orders, fills, executions) and the positions and
account values the fills change. What a client ordered and holds, beside the market it trades in
(`fake_market.py`).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from tests.fake_listings import Instrument
from tests.fake_market import Market
from tests.fake_tws_formats import tws_time


@dataclass
class OrderRecord:
    """An order as the fake's book keeps it and the openOrder/orderStatus/completedOrder
    encoders write it (`contract` is a fake_listings.Instrument)."""

    order_id: int
    client_id: int
    perm_id: int
    contract: object
    action: str
    quantity: float
    order_type: str
    lmt_price: Optional[float]
    aux_price: Optional[float]
    tif: str
    account: str
    order_ref: str
    status: str = "Submitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    parent_id: int = 0
    completed_time: str = ""  # tws_time(): "YYYYMMDD HH:MM:SS US/Eastern"
    completed_status: str = ""
    trail_stop_price: Optional[float] = None  # trailing orders only
    lmt_price_offset: Optional[float] = None
    submitter: str = ""  # completedOrder carries the TWS user name; openOrder leaves it empty
    what_if: Optional["WhatIf"] = None  # a what-if preview: never booked, answered with openOrder only

    @property
    def remaining(self) -> float:
        # What is left unfilled, also once cancelled: the 203 recording of orderStatus Cancelled
        # keeps remaining at the unfilled quantity (TWS writes the same value as text).
        return self.quantity - self.filled


@dataclass
class WhatIf:
    """The preview TWS puts in a what-if order's state: (initMargin, maintMargin, equityWithLoan)
    before, change and after, and the commission (its min/max left unset)."""

    margins_before: Tuple[float, float, float]
    margins_change: Tuple[float, float, float]
    margins_after: Tuple[float, float, float]
    commission: float
    currency: str = "USD"


@dataclass
class Execution:
    exec_id: str
    time: str  # tws_time(): "YYYYMMDD HH:MM:SS US/Eastern"
    order: OrderRecord
    shares: float
    price: float
    exchange: str = "CBOE"
    commission: float = 0.65
    realized_pnl: Optional[float] = None  # None: an opening trade (TWS writes Double.MAX_VALUE)


class OrderBook:
    """Orders by (client id, order id), executions, and the next valid order id."""

    def __init__(self, seed: int):
        self._orders: Dict[Tuple[int, int], OrderRecord] = {}
        self.executions: List[Execution] = []
        self._perm_ids = itertools.count(1_000_000 + seed % 1000 * 1000)
        self._exec_ids = itertools.count(1)
        self.next_order_id = 1

    def get(self, client_id: int, order_id: int) -> Optional[OrderRecord]:
        return self._orders.get((client_id, order_id))

    def add(self, order: OrderRecord) -> None:
        self._orders[(order.client_id, order.order_id)] = order
        self.next_order_id = max(self.next_order_id, order.order_id + 1)

    def new_perm_id(self) -> int:
        return next(self._perm_ids)

    def open_orders(self, client_id: Optional[int] = None) -> List[OrderRecord]:
        return [
            o
            for o in self._orders.values()
            if not o.completed_status and (client_id is None or o.client_id == client_id)
        ]

    def completed_orders(self) -> List[OrderRecord]:
        return [o for o in self._orders.values() if o.completed_status]

    def record_fill(self, order: OrderRecord, price: float) -> Execution:
        now = tws_time()  # "YYYYMMDD HH:MM:SS US/Eastern", as TWS writes times
        order.status, order.filled = "Filled", order.quantity
        order.avg_fill_price = order.last_fill_price = price
        order.completed_time = now
        order.completed_status = "Filled"
        execution = Execution(f"0000e0d5.{next(self._exec_ids):08x}.01.01", now, order, order.quantity, price)
        self.executions.append(execution)
        return execution

    def record_cancel(self, order: OrderRecord) -> None:
        order.status = "Cancelled"
        order.completed_time = tws_time()
        order.completed_status = "Cancelled by Trader"


@dataclass
class Position:
    account: str
    instrument: Instrument
    quantity: float
    avg_cost: float  # per contract, multiplier included (as TWS reports it)
    realized: float = 0.0  # what closing part of it made: updatePortfolio's realizedPNL


class Portfolio:
    """Positions and account values per account; fills from the fake's order book change them."""

    def __init__(self, market: Market, accounts: Sequence[str]):
        self.market = market
        self.accounts = list(accounts)
        self._lock = threading.Lock()
        self._positions: Dict[Tuple[str, int], Position] = {}
        self._cash: Dict[str, float] = {}
        for index, account in enumerate(self.accounts):
            self._cash[account] = 100_000.0 + 25_000.0 * index
            for instrument, quantity in self._opening_positions(index):
                price = self._mark(instrument)
                cost = price * 0.97 * (float(instrument.multiplier) if instrument.multiplier else 1.0)
                self._positions[(account, instrument.con_id)] = Position(account, instrument, quantity, round(cost, 4))

    def _opening_positions(self, index: int) -> List[Tuple[Instrument, float]]:
        market = self.market
        held = [(market.stocks["AAPL"], 100.0), (market.stocks["SPY"], 20.0 + 10 * index)]
        if index == 0:
            aapl_expiries = market.expirations("AAPL")
            expiry = aapl_expiries[min(len(aapl_expiries) - 1, 5)]
            spot = market.spot("AAPL")
            put = min(
                (o for o in market.find(symbol="AAPL", sec_type="OPT", expiry=expiry, right="P")),
                key=lambda o: abs(o.strike - spot * 0.9),
            )
            msft_call = min(
                market.find(symbol="MSFT", sec_type="OPT", expiry=market.expirations("MSFT")[-2], right="C"),
                key=lambda o: abs(o.strike - market.spot("MSFT") * 1.05),
            )
            held += [(put, -2.0), (msft_call, 1.0)]
        return held

    def _mark(self, instrument: Instrument) -> float:
        quote = self.market.quote(instrument)
        if quote.bid > 0 and quote.ask > 0:
            return round((quote.bid + quote.ask) / 2, 4)
        return quote.close

    def positions(self, account: str = "") -> List[Position]:
        with self._lock:
            return [replace(p) for p in self._positions.values() if not account or p.account == account]

    def apply_fill(self, account: str, instrument: Instrument, signed_quantity: float, price: float) -> None:
        multiplier = float(instrument.multiplier) if instrument.multiplier else 1.0
        with self._lock:
            key = (account, instrument.con_id)
            held = self._positions.get(key)
            self._cash[account] = self._cash.get(account, 0.0) - signed_quantity * price * multiplier
            if held is None:
                self._positions[key] = Position(account, instrument, signed_quantity, price * multiplier)
                return
            total = held.quantity + signed_quantity
            if (held.quantity > 0) != (signed_quantity > 0):  # closing (part of) it realizes P&L, as TWS counts it
                closed = min(abs(signed_quantity), abs(held.quantity))
                side = 1 if held.quantity > 0 else -1
                held.realized = round(held.realized + side * closed * (price * multiplier - held.avg_cost), 2)
            if total == 0:
                del self._positions[key]
            elif (held.quantity > 0) == (signed_quantity > 0):
                held.avg_cost = (held.avg_cost * held.quantity + price * multiplier * signed_quantity) / total
                held.quantity = total
            else:
                held.quantity = total

    def portfolio_rows(self, account: str) -> List[Tuple[Position, float, float, float]]:
        """(position, market price, market value, unrealized PnL) for updatePortfolio."""
        rows = []
        for position in self.positions(account):
            multiplier = float(position.instrument.multiplier) if position.instrument.multiplier else 1.0
            price = self._mark(position.instrument)
            value = round(price * multiplier * position.quantity, 2)
            rows.append((position, price, value, round(value - position.avg_cost * position.quantity, 2)))
        return rows

    def account_values(self, account: str) -> Dict[str, str]:
        """The account-summary tags (all in USD except AccountType)."""
        gross = sum(abs(value) for _, _, value, _ in self.portfolio_rows(account))
        net = sum(value for _, _, value, _ in self.portfolio_rows(account))
        with self._lock:
            cash = self._cash.get(account, 0.0)
        net_liq = cash + net
        maint = 0.25 * gross
        excess = net_liq - maint
        return {
            "AccountType": "INDIVIDUAL",
            "NetLiquidation": f"{net_liq:.2f}",
            "TotalCashValue": f"{cash:.2f}",
            "SettledCash": f"{cash:.2f}",
            "EquityWithLoanValue": f"{net_liq:.2f}",
            "GrossPositionValue": f"{gross:.2f}",
            "InitMarginReq": f"{0.3 * gross:.2f}",
            "MaintMarginReq": f"{maint:.2f}",
            "AvailableFunds": f"{net_liq - 0.3 * gross:.2f}",
            "ExcessLiquidity": f"{excess:.2f}",
            "BuyingPower": f"{4 * (net_liq - 0.3 * gross):.2f}",
        }
