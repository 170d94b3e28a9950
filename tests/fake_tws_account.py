"""The fake TWS's account and order requests, one `_on_<EClient method name>` handler each:
positions, account values and summaries, placing and cancelling orders, open and completed orders,
executions. A mixin of `fake_tws_session.ClientSession`, which dispatches to them and provides
`server`, `market`, `encoder`, `client_id`, `send`, `send_error` and `_resolve_one`; the book and
the portfolio they act on are `fake_account.py`'s, held by the server.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace
from typing import Dict, List, Optional

from ibapi.server_versions import MIN_SERVER_VER_COMPLETED_ORDERS

from tests.fake_account import OrderRecord, WhatIf
from tests.fake_listings import Instrument
from tests.fake_market import on_tick
from tests.fake_tws_formats import tws_time

MAX_ORDER_QUANTITY = 1000
# Shares hard to borrow: a short sale is held while they are located (TWS's 404, a warning: the
# order is live, PreSubmitted). A merger target's shares are the classic case.
HARD_TO_BORROW = frozenset(("MRGT",))
LOCATE_TEXT = "Order held while securities are located."
READ_ONLY_TEXT = "Error validating request.-'bN' : cause - The API interface is currently in Read-Only mode."
ACCOUNT_SUMMARY_TAGS = (
    "AccountType",
    "NetLiquidation",
    "TotalCashValue",
    "SettledCash",
    "EquityWithLoanValue",
    "GrossPositionValue",
    "InitMarginReq",
    "MaintMarginReq",
    "AvailableFunds",
    "ExcessLiquidity",
    "BuyingPower",
)


class AccountHandlers:
    """The account and order handlers of one client connection."""

    def _refuse_read_only(self, req_id: int) -> bool:
        if self.server.read_only:
            self.send_error(req_id, 321, READ_ONLY_TEXT)
        return self.server.read_only

    # ---- account -----------------------------------------------------------------------------

    def _accounts_for(self, account: str) -> List[str]:
        if account in ("", "All"):
            return list(self.server.accounts)
        return [account] if account in self.server.accounts else []

    def _on_reqPositions(self) -> None:
        for p in self.server.portfolio.positions():
            self.send(self.encoder.position(p.account, p.instrument, p.quantity, p.avg_cost))
        self.send(self.encoder.position_end())

    def _on_reqPositionsMulti(self, req_id: int, account: str, model_code: str) -> None:
        for name in self._accounts_for(account):
            for p in self.server.portfolio.positions(name):
                self.send(self.encoder.position_multi(req_id, name, p.instrument, p.quantity, p.avg_cost, model_code))
        self.send(self.encoder.position_multi_end(req_id))

    def _on_reqAccountSummary(self, req_id: int, group: str, tags: str) -> None:
        wanted = {t.strip() for t in tags.split(",")}
        for account in self.server.accounts:
            values = self.server.portfolio.account_values(account)
            for tag in ACCOUNT_SUMMARY_TAGS:
                if tag in wanted:
                    currency = "" if tag == "AccountType" else "USD"
                    self.send(self.encoder.account_summary(req_id, account, tag, values[tag], currency))
        self.send(self.encoder.account_summary_end(req_id))

    def _on_reqAccountUpdates(self, subscribe: bool, account: str) -> None:
        accounts = self._accounts_for(account or self.server.accounts[0])
        if not subscribe or len(accounts) != 1:
            return
        account, enc, portfolio = accounts[0], self.encoder, self.server.portfolio
        for key, value in portfolio.account_values(account).items():
            self.send(enc.account_value(key, value, "" if key == "AccountType" else "USD", account))
        for position, price, value, unrealized in portfolio.portfolio_rows(account):
            self.send(
                enc.portfolio_value(
                    position.instrument,
                    position.quantity,
                    price,
                    value,
                    position.avg_cost,
                    unrealized,
                    position.realized,
                    account,
                )
            )
        self.send(enc.account_time(time.strftime("%H:%M")))
        self.send(enc.account_download_end(account))

    def _on_reqAccountUpdatesMulti(self, req_id: int, account: str, model_code: str, ledger_and_nlv: bool) -> None:
        for name in self._accounts_for(account):
            for key, value in self.server.portfolio.account_values(name).items():
                currency = "" if key == "AccountType" else "USD"
                self.send(self.encoder.account_update_multi(req_id, name, model_code, key, value, currency))
        self.send(self.encoder.account_update_multi_end(req_id))

    # ---- orders ------------------------------------------------------------------------------

    def _order_rejection(
        self, account: str, action: str, quantity: float, order_type: str, lmt_price: Optional[float]
    ) -> Optional[str]:
        if account not in self.server.accounts:
            return f"The account code {account} is not valid for this user."
        if action not in ("BUY", "SELL"):
            return f"Invalid action {action}."
        if not 0 < quantity <= MAX_ORDER_QUANTITY:
            return f"Order quantity {quantity:g} is outside the allowed range 1..{MAX_ORDER_QUANTITY}."
        if order_type == "LMT" and (lmt_price is None or lmt_price <= 0):
            return "A limit order needs a positive limit price."
        if order_type not in ("LMT", "MKT"):
            return f"Order type {order_type} is not supported."
        return None

    def _on_placeOrder(
        self,
        order_id: int,
        contract: Dict,
        action: str,
        quantity: float,
        order_type: str,
        lmt_price: Optional[float],
        aux_price: Optional[float],
        tif: str,
        oca_group: str,
        account: str,
        open_close: str,
        origin: int,
        order_ref: str,
        transmit: bool,
        parent_id: int,
        what_if: bool = False,
    ) -> None:
        if self._refuse_read_only(order_id):
            return

        def place() -> None:
            self._place(
                order_id,
                contract,
                action,
                quantity,
                order_type,
                lmt_price,
                aux_price,
                tif,
                account,
                order_ref,
                parent_id,
                what_if,
            )

        if self.server.place_delay_s > 0 and not what_if:
            # Held behind TWS's precaution dialog: nothing about the order (no openOrder, no
            # orderStatus, not in open orders) until it is accepted; other messages keep flowing.
            self.server.call_later(self.server.place_delay_s, place)
        else:
            place()

    def _place(
        self,
        order_id: int,
        contract: Dict,
        action: str,
        quantity: float,
        order_type: str,
        lmt_price: Optional[float],
        aux_price: Optional[float],
        tif: str,
        account: str,
        order_ref: str,
        parent_id: int,
        what_if: bool,
    ) -> None:
        instrument = self._resolve_one(order_id, contract)
        if instrument is None:
            return
        server, account = self.server, account or self.server.accounts[0]
        reason = self._order_rejection(account, action, quantity, order_type, lmt_price)
        if reason:
            # TWS attaches advancedOrderRejectJson to order rejections (the field exists from
            # MIN_SERVER_VER_ADVANCED_ORDER_REJECT); its content is opaque to the client.
            self.send_error(
                order_id,
                201,
                f"Order rejected - reason:{reason}",
                json.dumps({"rejectReason": reason}, separators=(",", ":")),
            )
            return
        if lmt_price is not None and not on_tick(lmt_price, instrument.min_tick):
            self.send_error(
                order_id, 110, "The price does not conform to the minimum price variation for this contract."
            )
            return
        price = lmt_price if order_type == "LMT" else None
        if what_if:
            # A what-if order is a preview: TWS answers with one openOrder whose state carries the
            # margin and commission figures, books nothing and counts no order.
            preview = OrderRecord(
                order_id,
                self.client_id,
                0,
                instrument,
                action,
                quantity,
                order_type,
                price,
                aux_price,
                tif or "DAY",
                account,
                order_ref,
                status="PreSubmitted",
                parent_id=parent_id,
                what_if=self._what_if(instrument, account, quantity, price),
            )
            self.send(self.encoder.open_order(preview))
            return
        with server.lock:
            order = server.orders.get(self.client_id, order_id)
            if order is not None and order.completed_status:
                self.send_error(order_id, 103, "Duplicate order id")
                return
            warning = self._order_warning(instrument, account, action, quantity)
            if order is None:
                order = OrderRecord(
                    order_id,
                    self.client_id,
                    server.orders.new_perm_id(),
                    instrument,
                    action,
                    quantity,
                    order_type,
                    price,
                    aux_price,
                    tif or "DAY",
                    account,
                    order_ref,
                    parent_id=parent_id,
                )
                server.orders.add(order)
            else:
                order.quantity, order.lmt_price, order.tif = quantity, price, tif or order.tif
            server.count("orders_placed")
            late = server.late_rejections.pop(0) if server.late_rejections else None
            if warning or late:  # held (not at the exchange yet), or accepted and rejected a moment later
                order.status, fill_at = "PreSubmitted", None
            else:
                fill_at = self.market.fill_price(instrument, action, price)
            execution = server.orders.record_fill(order, fill_at) if fill_at is not None else None
        if warning:  # before the order's messages, as TWS sends them
            self.send_error(order_id, *warning)
        if late:
            server.call_later(late[1], lambda: self._reject_late(order, late[0]))
        if execution is not None:
            signed = quantity if action == "BUY" else -quantity
            server.portfolio.apply_fill(account, instrument, signed, execution.price)
        self.send(self.encoder.open_order(order))
        self.send(self.encoder.order_status(order))
        if execution is not None:
            self.send(self.encoder.exec_details(-1, execution))
            self.send(self.encoder.commission_report(execution))

    def _order_warning(self, instrument: Instrument, account: str, action: str, quantity: float):
        """(code, text) of the warning TWS sends with an order that stays live, or None: 399 when the
        market is closed (the order waits for the next session), 404 for a short sale of shares that
        must be located first. Under server.lock."""
        if self.server.market_closed:
            now = dt.datetime.strptime(tws_time()[:17], "%Y%m%d %H:%M:%S")  # New York time
            opens = now.replace(hour=9, minute=30, second=0)
            if now >= opens:
                opens += dt.timedelta(days=1)
            while opens.weekday() >= 5:
                opens += dt.timedelta(days=1)
            where = f"{instrument.local_symbol or instrument.symbol} {instrument.exchange}"
            return 399, (
                f"Order Message:\n{action} {quantity:g} {where}\nWarning: your order will not be placed at "
                f"the exchange until {opens:%Y-%m-%d %H:%M:%S} US/Eastern"
            )
        if instrument.sec_type == "STK" and action == "SELL" and instrument.symbol in HARD_TO_BORROW:
            held = sum(
                p.quantity for p in self.server.portfolio.positions(account) if p.instrument.con_id == instrument.con_id
            )
            if quantity > held:
                return 404, LOCATE_TEXT
        return None

    def _reject_late(self, order: OrderRecord, reason: str) -> None:
        """An accepted order rejected afterwards (server.reject_after_accept): its status becomes
        Inactive (it stays among the open orders, as TWS lists an inactive order) and error 201
        gives the reason."""
        with self.server.lock:
            if order.status not in ("PreSubmitted", "Submitted") or order.completed_status:
                return  # cancelled or filled meanwhile
            order.status = "Inactive"
        self.send(self.encoder.open_order(order))
        self.send(self.encoder.order_status(order))
        self.send_error(
            order.order_id,
            201,
            f"Order rejected - reason:{reason}",
            json.dumps({"rejectReason": reason}, separators=(",", ":")),
        )

    def _what_if(self, instrument: Instrument, account: str, quantity: float, price: Optional[float]) -> WhatIf:
        """The fake's margin model (portfolio: initial 30 %, maintenance 25 % of gross position
        value) applied to the order's notional, and its commission (0.65 per option contract,
        0.005 per share with a 1.00 minimum)."""
        quote = self.market.quote(instrument)
        unit = price if price is not None else (quote.last if quote.last > 0 else quote.close)
        multiplier = float(instrument.multiplier or 1)
        notional = abs(quantity) * max(unit, 0.0) * multiplier
        commission = 0.65 * quantity if instrument.sec_type == "OPT" else max(1.0, 0.005 * quantity)
        values = self.server.portfolio.account_values(account)
        before = tuple(float(values[k]) for k in ("InitMarginReq", "MaintMarginReq", "EquityWithLoanValue"))
        change = (round(0.3 * notional, 2), round(0.25 * notional, 2), round(-commission, 2))
        after = tuple(round(b + c, 2) for b, c in zip(before, change))
        return WhatIf(before, change, after, round(commission, 2))

    def _on_cancelOrder(self, order_id: int) -> None:
        if self._refuse_read_only(order_id):
            return
        with self.server.lock:
            order = self.server.orders.get(self.client_id, order_id)
            if order is None:
                self.send_error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.")
                return
            if order.completed_status:
                # Filled or cancelled already: TWS's 161 (recorded at 203), naming the permId.
                self.send_error(
                    order_id,
                    161,
                    f"Cancel attempted when order is not in a cancellable state.  Order permId ={order.perm_id}",
                )
                return
            pending = replace(order, status="PendingCancel")
            self.server.orders.record_cancel(order)
        self._announce_cancel(pending, order)

    def _announce_cancel(self, pending: OrderRecord, cancelled: OrderRecord) -> None:
        """TWS's cancel burst (recorded at 203; the same messages as text below it): openOrder and
        orderStatus PendingCancel, orderStatus Cancelled, error 202."""
        self.send(self.encoder.open_order(pending))
        self.send(self.encoder.order_status(pending))
        self.send(self.encoder.order_status(cancelled))
        self.send_error(cancelled.order_id, 202, "Order Canceled - reason:")

    def _on_reqGlobalCancel(self) -> None:
        if self._refuse_read_only(-1):
            return
        with self.server.lock:
            cancelled = []
            for order in self.server.orders.open_orders():
                cancelled.append((replace(order, status="PendingCancel"), order))
                self.server.orders.record_cancel(order)
        for session in self.server.ready_sessions():
            for pending, order in cancelled:
                if order.client_id == session.client_id:
                    session._announce_cancel(pending, order)

    def _send_open_orders(self, client_id: Optional[int]) -> None:
        if self._refuse_read_only(-1):
            return
        with self.server.lock:
            orders = self.server.orders.open_orders(client_id)
        for order in orders:
            self.send(self.encoder.open_order(order))
            self.send(self.encoder.order_status(order))
        self.send(self.encoder.open_order_end())

    def _on_reqOpenOrders(self) -> None:
        self._send_open_orders(self.client_id)

    def _on_reqAllOpenOrders(self) -> None:
        self._send_open_orders(None)

    def _on_reqAutoOpenOrders(self, auto_bind: bool) -> None:
        self._refuse_read_only(-1)

    def _on_reqCompletedOrders(self, api_only: bool) -> None:
        if self.encoder.v < MIN_SERVER_VER_COMPLETED_ORDERS:
            return  # no such request below 150 (EClient does not send it)
        with self.server.lock:
            orders = [] if self.server.read_only else self.server.orders.completed_orders()
        for order in orders:
            self.send(self.encoder.completed_order(order))
        self.send(self.encoder.completed_orders_end())

    def _on_reqExecutions(
        self,
        req_id: int,
        client_id: int,
        account: str,
        since: str,
        symbol: str,
        sec_type: str,
        exchange: str,
        side: str,
        last_n_days: Optional[int] = None,
    ) -> None:
        # lastNDays (server version >= 200, read from the text or protobuf filter): executions of that
        # many days back, today included; without it (or below 200) today's only, as TWS.
        days = last_n_days if last_n_days and last_n_days > 0 else 1
        oldest = tws_time(time.time() - (days - 1) * 86400)[:8]
        with self.server.lock:
            executions = [
                e
                for e in self.server.orders.executions
                if e.time[:8] >= oldest
                and (not client_id or e.order.client_id == client_id)
                and (not account or e.order.account == account)
                and (not symbol or e.order.contract.symbol == symbol)
                and (not sec_type or e.order.contract.sec_type == sec_type)
                and (not side or e.order.action == side)
            ]
        for execution in executions:
            self.send(self.encoder.exec_details(req_id, execution))
            self.send(self.encoder.commission_report(execution))
        self.send(self.encoder.exec_details_end(req_id))
