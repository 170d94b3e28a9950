"""OrderDesk's account reads (positions, account summary, open orders) against recorded TWS callback
sequences (tests.order_replay), and positions decoded by ibapi from TWS's bytes."""

from __future__ import annotations

import base64
import json
import unittest
from pathlib import Path

from ibapi.contract import Contract
from ibapi.decoder import Decoder
from ibapi.message import IN
from ibapi.protobuf.Position_pb2 import Position as PositionProto
from ibapi.server_versions import MIN_SERVER_VER_PROTOBUF_ACCOUNTS_POSITIONS
from ibapi.wrapper import EWrapper

from agent.errors import IB_NOT_CONNECTED, READ_ONLY_API, TIMEOUT
from agent.orders import account as order_account
from agent.orders import book as order_book
from tests.order_replay import PAPER, DeskTestCase, load


class AccountTest(DeskTestCase):
    def setUp(self):
        super().setUp()
        self.account = load("account")

    def test_positions_skip_closed_and_repeated_rows_and_cancel_the_subscription(self):
        desk, conn = self.desk(answers=self.account["positions"])
        positions = desk.account.positions()["positions"]
        self.assertEqual(conn.methods(), ["reqPositions", "cancelPositions", "reqAccountUpdates", "reqAccountUpdates"])
        self.assertEqual(len(positions), 2)
        stock, call = positions
        self.assertEqual(
            stock,
            {
                "account": "DU1234567",
                "con_id": 265598,
                "ticker": "AAPL",
                "sec_type": "STK",
                "expiration": None,
                "strike": None,
                "right": None,
                "multiplier": 1,
                "quantity": 200,
                "avg_cost": 171.2534,
                "market_price": 182.5,
                "market_value": 36500.0,
                "unrealized_pnl": 2249.32,
                "realized_pnl": 120.4,
            },
        )
        self.assertEqual(
            (call["expiration"], call["strike"], call["right"], call["multiplier"], call["quantity"]),
            ("20300118", 150.0, "C", 100, -2),
        )

    def test_futures_and_futures_options_keep_their_expiration_stocks_and_options_unchanged(self):
        desk, conn = self.desk(answers=self.account["positions_all_types"])
        rows = {row["sec_type"]: row for row in desk.account.positions()["positions"]}
        contract = ("ticker", "sec_type", "expiration", "strike", "right", "multiplier", "quantity")
        self.assertEqual(
            {kind: tuple(row[k] for k in contract) for kind, row in rows.items()},
            {
                "STK": ("AAPL", "STK", None, None, None, 1, 200),
                "OPT": ("AAPL", "OPT", "20300118", 150.0, "C", 100, -2),
                "FUT": ("ES", "FUT", "20300315", None, None, 50, 1),
                "FOP": ("ES", "FOP", "20300315", 5800.0, "P", 50, -3),
            },
        )
        self.assertEqual((rows["FUT"]["con_id"], rows["FOP"]["con_id"]), (620731015, 702418311))

    def test_an_expiration_is_a_date_or_a_contract_month_without_a_time(self):
        for given, expected in (
            ("20300315", "20300315"),
            ("203003", "203003"),
            ("20300315 08:30 US/Central", "20300315"),
            ("", None),
            ("  ", None),
        ):
            contract = Contract()
            contract.symbol, contract.secType, contract.lastTradeDateOrContractMonth = "ES", "FUT", given
            self.assertEqual(order_book.contract_dict(contract)["expiration"], expected, given)
        contract.lastTradeDate = "20300315"  # ibapi 10.4x's protobuf decoder may fill only this one
        self.assertEqual(order_book.contract_dict(contract)["expiration"], "20300315")

    def test_positions_time_out_when_tws_never_ends_them(self):
        desk, conn = self.desk(answers={"reqPositions": self.account["positions"]["reqPositions"][:1]})
        self.fails(TIMEOUT, desk.account.positions)
        self.assertEqual(conn.methods(), ["reqPositions", "cancelPositions"])

    def test_account_summary(self):
        desk, conn = self.desk(answers=self.account["account_summary"])
        accounts = desk.account.summary()["accounts"]
        self.assertEqual(
            accounts,
            {
                "DU1234567": {
                    "net_liquidation": 1012345.67,
                    "total_cash": 987654.32,
                    "buying_power": 4049382.68,
                    "available_funds": 1001234.0,
                    "excess_liquidity": 1003456.1,
                    "currency": "USD",
                }
            },
        )
        method, args = conn.sent[0]
        self.assertEqual((method, args[1]), ("reqAccountSummary", "All"))
        self.assertEqual(set(args[2].split(",")), set(order_account.SUMMARY_TAGS))
        self.assertEqual(conn.sent[1], ("cancelAccountSummary", (args[0],)))

    def test_open_orders_of_all_clients_say_which_client_placed_each(self):
        desk, conn = self.desk(answers=self.account["open_orders"], status=dict(PAPER, client_id=17))
        orders = desk.open_orders()["orders"]
        self.assertEqual(conn.methods(), ["reqAllOpenOrders"])
        mine, manual = orders
        self.assertEqual(
            mine,
            {
                "order_id": 12,
                "perm_id": 1888000012,
                "client_id": 17,
                "account": "DU1234567",
                "contract": {
                    "con_id": 712446551,
                    "ticker": "AAPL",
                    "sec_type": "OPT",
                    "expiration": "20300118",
                    "strike": 150.0,
                    "right": "C",
                    "multiplier": 100,
                    "currency": "USD",
                    "trading_class": "AAPL",
                },
                "action": "SELL",
                "quantity": 1,
                "order_type": "LMT",
                "limit_price": 2.5,
                "tif": "DAY",
                "status": "Submitted",
                "filled": 0,
                "remaining": 1,
                "avg_fill_price": None,
                "order_ref": "req-abc",
                "cancellable": True,
                "warning": None,
                "reason": None,
            },
        )  # placed under this agent's client id 17
        self.assertEqual(
            (
                manual["client_id"],
                manual["order_type"],
                manual["limit_price"],
                manual["status"],
                manual["filled"],
                manual["avg_fill_price"],
                manual["order_ref"],
            ),
            (0, "STP", None, "PreSubmitted", 40, 151.25, None),
        )
        self.assertFalse(manual["cancellable"])  # placed in TWS (client 0): not this agent's to cancel

    def test_open_orders_in_read_only_mode(self):
        desk, _ = self.desk(
            answers={
                "reqAllOpenOrders": [
                    [
                        "error",
                        [
                            -1,
                            321,
                            "Error validating request.-'a0' : cause - "
                            "The API interface is currently in Read-Only mode.",
                        ],
                    ]
                ]
            }
        )
        error = self.fails(READ_ONLY_API, desk.open_orders)
        self.assertIn("Read-Only", error.message)

    def test_a_lost_connection_ends_the_wait_at_once(self):
        desk, _ = self.desk(answers={"reqPositions": [["$disconnect", []]]})
        self.fails(IB_NOT_CONNECTED, desk.account.positions)


CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "tws-captures" / "server_frames.jsonl"


class PositionCallbacks(EWrapper):
    def __init__(self):
        super().__init__()
        self.events = []

    def position(self, account, contract, position, avgCost):
        self.events.append(["position", [account, contract, position, avgCost]])


class PositionsOffTheWireTest(DeskTestCase):
    """The same positions decoded by ibapi from TWS's bytes: the text message (the layout of a real
    capture) below 207, the protobuf message from 207 on; futures keep their expiration on both."""

    FUT = {
        "conId": 620731015,
        "symbol": "ES",
        "secType": "FUT",
        "lastTradeDateOrContractMonth": "20300315",
        "multiplier": "50",
        "exchange": "CME",
        "currency": "USD",
        "localSymbol": "ESH0",
        "tradingClass": "ES",
    }
    FOP = dict(FUT, conId=702418311, secType="FOP", strike=5800.0, right="P", localSymbol="ESH0 P5800")

    def positions(self, events) -> dict:
        desk, _ = self.desk(answers={"reqPositions": events + [["positionEnd", []]]})
        return {row["sec_type"]: row for row in desk.account.positions()["positions"]}

    def test_text_messages_in_the_layout_of_a_real_capture(self):
        if not CAPTURES.exists():
            self.skipTest(f"{CAPTURES} is not there")
        frames = [json.loads(line) for line in CAPTURES.read_text(encoding="utf-8").splitlines() if line.strip()]
        (frame,) = [f for f in frames if f["name"] == "position AMZN STK"]
        captured = base64.b64decode(frame["payload_b64"]).split(b"\0")[1:-1]  # after the id; NUL-ended
        self.assertEqual(len(captured), 15, captured)  # version 3: account, 11 contract fields, position, cost
        callbacks = PositionCallbacks()
        decoder = Decoder(callbacks, frame["server_version"])
        decoder.interpret(captured, frame["msg_id"])
        for spec, quantity, cost in ((self.FUT, b"1", b"291312.5"), (self.FOP, b"-3", b"2140.0")):
            fields = list(captured)
            fields[2:14] = [
                str(spec.get(k, "")).encode()
                for k in (
                    "conId",
                    "symbol",
                    "secType",
                    "lastTradeDateOrContractMonth",
                    "strike",
                    "right",
                    "multiplier",
                    "exchange",
                    "currency",
                    "localSymbol",
                    "tradingClass",
                )
            ] + [quantity]
            fields[14] = cost
            fields[6] = fields[6] or b"0.0"  # strike: TWS writes 0.0 for what has none
            decoder.interpret(fields, frame["msg_id"])
        rows = self.positions(callbacks.events)
        self.assertEqual(
            (rows["STK"]["ticker"], rows["STK"]["expiration"], rows["STK"]["quantity"]), ("AMZN", None, 15)
        )
        self.assertEqual(
            (rows["FUT"]["expiration"], rows["FUT"]["multiplier"], rows["FUT"]["quantity"]), ("20300315", 50, 1)
        )
        self.assertEqual(
            (rows["FOP"]["expiration"], rows["FOP"]["strike"], rows["FOP"]["right"]), ("20300315", 5800.0, "P")
        )

    def test_protobuf_messages(self):
        callbacks = PositionCallbacks()
        decoder = Decoder(callbacks, MIN_SERVER_VER_PROTOBUF_ACCOUNTS_POSITIONS)
        for spec, quantity in ((self.FUT, "1"), (self.FOP, "-3")):
            message = PositionProto(account="DU1234567", position=quantity, avgCost=2140.0)
            fields = dict(spec, multiplier=float(spec["multiplier"]))
            for name, value in fields.items():
                setattr(message.contract, name, value)
            decoder.processProtoBuf(message.SerializeToString(), IN.POSITION_DATA)
        rows = self.positions(callbacks.events)
        self.assertEqual(
            (rows["FUT"]["expiration"], rows["FUT"]["multiplier"], rows["FUT"]["quantity"]), ("20300315", 50, 1)
        )
        self.assertEqual(
            (rows["FOP"]["expiration"], rows["FOP"]["strike"], rows["FOP"]["right"], rows["FOP"]["quantity"]),
            ("20300315", 5800.0, "P", -3),
        )


if __name__ == "__main__":
    unittest.main()
