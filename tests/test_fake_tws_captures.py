"""The fake TWS's text messages, field for field against frames recorded from real TWS / IB Gateway.

`../shared/tws-captures/server_frames.jsonl` (relative to the project root) holds real
server-to-client messages (see its README). For every text capture (`protobuf: false`) the fake's
`Encoder`, at the capture's server version, is given the same inputs and must write the same
payload: the same field count and order, numbers written the same way (`5.0` vs `5`, `-1.00`,
`1.7976931348623157E308`), the same empty fields and unset values. A mismatch names the field's
index, its meaning (taken from ibapi's own Decoder, which reads the capture), expected and got.

Inputs. Messages about things the fake's market does not have (AMZN, an OBDC put, a TRAIL LIMIT
order, an IEX execution, accounts with other ids and values) cannot be reproduced by the running
fake; for those the instrument / order / execution record is built from the capture's own values,
so what is compared is what the encoder decides: layout, formats, constants and unset values. Values
the encoder derives itself (the tickPrice attribute mask of a bid or ask, the "not computed"
greeks row, the openOrder allocation text, the unset forms) are NOT fed in: the encoder must write
them as TWS does. The protobuf captures (`protobuf: true`) are compared in test_fake_tws_proto.
The captures are read at run time and never copied into the project; without them this test fails.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import linecache
import re
import socket
import struct
import sys
import time
import unittest
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ibapi.decoder import Decoder
from ibapi.wrapper import EWrapper

from tests.fake_account import Execution, OrderRecord
from tests.fake_listings import Instrument
from tests.fake_tws import FakeTWS
from tests.fake_tws_formats import tws_time
from tests.fake_tws_framing import FrameReader, frame
from tests.fake_tws_wire import Encoder

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "tws-captures" / "server_frames.jsonl"


def load_captures() -> List[dict]:
    if not CAPTURES.is_file():
        raise AssertionError(
            f"the real TWS captures are missing: {CAPTURES} (they live beside the project, in ../shared/tws-captures/)"
        )
    with CAPTURES.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def text_fields(capture: dict) -> List[bytes]:
    """The body's fields after the message id (below 201 the id is the first text field, from 201
    it is a 4-byte big-endian int)."""
    payload = base64.b64decode(capture["payload_b64"])
    if capture["server_version"] >= 201:
        return payload[4:].split(b"\0")[:-1]
    return payload.split(b"\0")[:-1][1:]


class _NamingIterator:
    """Feeds fields to ibapi's Decoder and records, for each field, the source line that read it
    (`order.lmtPrice = decode(float, fields)` -> 'order.lmtPrice'): the field's meaning, in ibapi's
    own words."""

    def __init__(self, fields: List[bytes]):
        self._fields, self._next, self.names = fields, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= len(self._fields):
            raise StopIteration
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.endswith(("utils.py", "decoder_utils.py")):
            frame = frame.f_back
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip() if frame else ""
        target = re.match(r"([\w.\[\]]+)\s*(?::[^=]*)?=[^=]", line)
        name = target.group(1) if target else line
        self.names.append(re.sub(r"^(self\.)|(contract\.)(?=contract\.)", "", name) or "?")
        value = self._fields[self._next]
        self._next += 1
        return value


class _QuietWrapper(EWrapper):
    def error(self, *args, **kwargs):  # EWrapper.error logs every notice it decodes
        pass


def field_meanings(capture: dict) -> List[str]:
    """One meaning per field of the payload, the message id first."""
    fields = text_fields(capture)
    decoder = Decoder(_QuietWrapper(), capture["server_version"])
    handle = decoder.msgId2handleInfo[capture["msg_id"]]
    if handle.processMeth is not None:
        reader = _NamingIterator(fields)
        handle.processMeth(decoder, reader)
        names = reader.names
        if len(names) != len(fields):
            raise AssertionError(f"{capture['name']}: ibapi read {len(names)} of {len(fields)} fields")
        names = [n if n.strip() != "decode(int, fields)" else "version" for n in names]
        names = [n if "longName" not in n and "unicode-escape" not in n else "longName" for n in names]
    else:  # read by the wrapper's signature: a version field, then the params
        names = ["version"] + [p for p in handle.wrapperParams if p != "self"]
    return ["msgId"] + names


def split_payload(payload: bytes, version: int) -> List[str]:
    """Payload -> texts, the message id first (from 201 the id's 4 bytes, shown as 'int:<id>')."""
    if version >= 201:
        (msg_id,) = struct.unpack(">I", payload[:4])
        rest = payload[4:]
        if not rest.endswith(b"\0"):
            return [f"int:{msg_id}", f"<not NUL-terminated: {rest!r}>"]
        return [f"int:{msg_id}"] + rest.decode("utf-8").split("\0")[:-1]
    if not payload.endswith(b"\0"):
        return [f"<not NUL-terminated: {payload!r}>"]
    return payload.decode("utf-8").split("\0")[:-1]


def field_differences(capture: dict, got: bytes) -> List[str]:
    """'field i (meaning): expected X, got Y' for every field that differs, then missing/extra."""
    version = capture["server_version"]
    expected = split_payload(base64.b64decode(capture["payload_b64"]), version)
    actual = split_payload(got, version)
    meanings = field_meanings(capture)
    found = []
    for i in range(max(len(expected), len(actual))):
        meaning = meanings[i] if i < len(meanings) else "?"
        if i >= len(actual):
            found.append(f"field {i} ({meaning}): expected {expected[i]!r}, missing")
        elif i >= len(expected):
            found.append(f"field {i} (extra): got {actual[i]!r} beyond the {len(expected)} TWS writes")
        elif expected[i] != actual[i]:
            found.append(f"field {i} ({meaning}): expected {expected[i]!r}, got {actual[i]!r}")
    return found


class Captured:
    """A capture's values by meaning (the n-th field of that meaning)."""

    def __init__(self, capture: dict):
        self.names = field_meanings(capture)[1:]
        self.values = [f.decode("utf-8") for f in text_fields(capture)]

    def s(self, name: str, nth: int = 0) -> str:
        hits = [v for n, v in zip(self.names, self.values) if n == name or n.endswith("." + name)]
        if len(hits) <= nth:
            raise KeyError(f"no field {name!r} (#{nth}) in {self.names}")
        return hits[nth]

    def i(self, name: str, nth: int = 0) -> int:
        return int(self.s(name, nth))

    def f(self, name: str, nth: int = 0) -> Optional[float]:
        text = self.s(name, nth)
        return float(text) if text else None

    def all(self, name: str) -> List[str]:
        return [v for n, v in zip(self.names, self.values) if n == name]


# ---- inputs: what each captured message says, handed to the fake's encoder -------------------


def _contract_data_instrument(c: Captured) -> Instrument:
    """A contractDetails row's instrument, built from the capture (reference data is input; the
    layout, the sizes, aggGroup, stockType and the formats are the encoder's)."""
    sec_ids = tuple(zip(c.all("tagValue.tag"), c.all("tagValue.value")))
    return Instrument(
        con_id=c.i("conId"),
        symbol=c.s("symbol"),
        sec_type=c.s("secType"),
        expiry=c.s("lastTradeDateOrContractMonth"),
        strike=c.f("strike") or 0.0,
        right=c.s("right"),
        multiplier=c.s("multiplier"),
        exchange=c.s("exchange"),
        primary_exchange=c.s("primaryExchange"),
        currency=c.s("currency"),
        local_symbol=c.s("localSymbol"),
        trading_class=c.s("tradingClass"),
        long_name=c.s("longName"),
        min_tick=c.f("minTick"),
        under_con_id=c.i("underConId"),
        valid_exchanges=c.s("validExchanges"),
        industry=c.s("industry"),
        category=c.s("category"),
        subcategory=c.s("subcategory"),
        order_types=c.s("orderTypes"),
        market_rule_ids=c.s("marketRuleIds"),
        trading_hours=c.s("tradingHours"),
        liquid_hours=c.s("liquidHours"),
        sec_ids=sec_ids,
    )


def _order_contract(c: Captured) -> Instrument:
    """The order's contract; a right other than C/P ("?" for a stock) is the encoder's to write."""
    right = c.s("contract.right")
    return Instrument(
        con_id=c.i("contract.conId"),
        symbol=c.s("contract.symbol"),
        sec_type=c.s("contract.secType"),
        expiry=c.s("contract.lastTradeDateOrContractMonth"),
        strike=c.f("contract.strike") or 0.0,
        right=right if right in ("C", "P") else "",
        multiplier=c.s("contract.multiplier"),
        exchange=c.s("contract.exchange"),
        currency=c.s("contract.currency"),
        local_symbol=c.s("contract.localSymbol"),
        trading_class=c.s("contract.tradingClass"),
    )


def _tws_time_again(text: str) -> str:
    """A recorded "YYYYMMDD HH:MM:SS US/Eastern" turned into the instant it names and written again
    by the fake's tws_time(), so the time format (not the value) is what gets compared."""
    local = dt.datetime.strptime(text.rsplit(" ", 1)[0], "%Y%m%d %H:%M:%S")
    for offset in (-4, -5):
        epoch = (local - dt.timedelta(hours=offset)).replace(tzinfo=dt.timezone.utc).timestamp()
        if tws_time(epoch) == local.strftime("%Y%m%d %H:%M:%S US/Eastern"):
            return tws_time(epoch)
    return tws_time((local + dt.timedelta(hours=5)).replace(tzinfo=dt.timezone.utc).timestamp())


def _order(c: Captured, instrument: Instrument, order_id: int = 0, client_id: int = 0, status: str = "") -> OrderRecord:
    aux = c.f("order.auxPrice")
    return OrderRecord(
        order_id=order_id,
        client_id=client_id,
        perm_id=c.i("order.permId"),
        contract=instrument,
        action=c.s("order.action"),
        quantity=float(c.s("order.totalQuantity")),
        order_type=c.s("order.orderType"),
        lmt_price=c.f("order.lmtPrice"),
        aux_price=aux or None,
        tif=c.s("order.tif"),
        account=c.s("order.account"),
        order_ref=c.s("order.orderRef"),
        status=status,
    )


def _open_order(enc: Encoder, c: Captured) -> list:
    # OBDC is not in the fake's market: contract and order from the capture (a resting GTC limit
    # order with no aux price, status PreSubmitted).
    order = _order(
        c,
        _order_contract(c),
        order_id=c.i("order.orderId"),
        client_id=c.i("order.clientId"),
        status=c.s("orderState.status"),
    )
    return enc.open_order(order)


def _completed_order(enc: Encoder, c: Captured) -> list:
    # A TRAIL LIMIT order, which the fake's book does not take: built from the capture, with its
    # trailing fields, completion time/status and the TWS user name as submitter.
    order = _order(c, _order_contract(c), status=c.s("orderState.status"))
    order.filled = float(c.s("order.filledQuantity"))
    order.trail_stop_price = c.f("order.trailStopPrice")
    order.lmt_price_offset = c.f("order.lmtPriceOffset")
    order.completed_time = _tws_time_again(c.s("orderState.completedTime"))
    order.completed_status = c.s("orderState.completedStatus")
    order.submitter = c.s("order.submitter")
    return enc.completed_order(order)


def _order_status(enc: Encoder, c: Captured) -> list:
    order = OrderRecord(
        c.i("orderId"),
        c.i("clientId"),
        c.i("permId"),
        None,
        "BUY",
        float(c.s("remaining")),
        "LMT",
        1.0,
        None,
        "DAY",
        "DU1",
        "",
        status=c.s("status"),
        parent_id=c.i("parentId"),
    )
    return enc.order_status(order)


def _exec_details(enc: Encoder, c: Captured) -> list:
    # An AAPL fill on IEX, order 1 of client 94: built from the capture (the fake fills on CBOE).
    instrument = Instrument(
        c.i("contract.conId"),
        c.s("contract.symbol"),
        c.s("contract.secType"),
        local_symbol=c.s("contract.localSymbol"),
        trading_class=c.s("contract.tradingClass"),
        currency=c.s("contract.currency"),
        primary_exchange="NASDAQ",
    )
    order = OrderRecord(
        c.i("orderId"),
        c.i("execution.clientId"),
        c.i("execution.permId"),
        instrument,
        "BUY" if c.s("execution.side") == "BOT" else "SELL",
        float(c.s("execution.shares")),
        "LMT",
        None,
        None,
        "DAY",
        c.s("execution.acctNumber"),
        c.s("execution.orderRef"),
    )
    execution = Execution(
        c.s("execution.execId"),
        _tws_time_again(c.s("execution.time")),
        order,
        float(c.s("execution.shares")),
        float(c.s("execution.price")),
        exchange=c.s("execution.exchange"),
    )
    return enc.exec_details(c.i("reqId"), execution)


def _commission(enc: Encoder, c: Captured) -> list:
    execution = Execution(
        c.s("execId"), "", None, 1.0, 1.0, commission=float(c.s("commissionAndFees")), realized_pnl=c.f("realizedPNL")
    )
    return enc.commission_report(execution)


def _position(enc: Encoder, c: Captured) -> list:
    # AMZN is not in the fake's market: a NASDAQ stock built from the capture.
    stock = Instrument(
        c.i("contract.conId"),
        c.s("contract.symbol"),
        "STK",
        primary_exchange=c.s("contract.exchange"),
        local_symbol=c.s("contract.localSymbol"),
        trading_class=c.s("contract.tradingClass"),
    )
    return enc.position(c.s("account"), stock, float(c.s("position")), float(c.s("avgCost")))


def _portfolio(enc: Encoder, c: Captured) -> list:
    stock = Instrument(
        c.i("contract.conId"),
        c.s("contract.symbol"),
        "STK",
        primary_exchange=c.s("contract.primaryExchange"),
        local_symbol=c.s("contract.localSymbol"),
        trading_class=c.s("contract.tradingClass"),
    )
    return enc.portfolio_value(
        stock,
        float(c.s("position")),
        float(c.s("marketPrice")),
        float(c.s("marketValue")),
        float(c.s("averageCost")),
        float(c.s("unrealizedPNL")),
        float(c.s("realizedPNL")),
        c.s("accountName"),
    )


def _tick_price(enc: Encoder, c: Captured) -> list:
    # The attribute mask is not an input: the encoder sets it for the tick type as TWS does.
    return enc.tick_price(c.i("reqId"), c.i("tickType"), float(c.s("price")), float(c.s("size")))


def _tick_option_computation(enc: Encoder, c: Captured) -> list:
    values = [c.f(n) for n in ("impliedVol", "delta", "optPrice", "pvDividend", "gamma", "vega", "theta", "undPrice")]
    return enc.tick_option_computation(c.i("reqId"), c.i("tickTypeInt"), *values, tick_attrib=c.i("tickAttrib"))


def _tick_option_not_computed(enc: Encoder, c: Captured) -> list:
    # Nothing is fed but the request and tick type: the "not computed" row is the encoder's.
    return enc.tick_option_not_computed(c.i("reqId"), c.i("tickTypeInt"))


BUILDERS: Dict[str, Callable[[Encoder, Captured], list]] = {
    "contractData AAPL STK": lambda enc, c: enc.contract_data(c.i("reqId"), _contract_data_instrument(c)),
    "contractData AAPL OPT": lambda enc, c: enc.contract_data(c.i("reqId"), _contract_data_instrument(c)),
    "contractDataEnd": lambda enc, c: enc.contract_data_end(c.i("reqId")),
    "securityDefinitionOptionParameter AAPL CBOE": lambda enc, c: enc.sec_def_opt_params(
        c.i("reqId"),
        c.s("exchange"),
        c.i("underlyingConId"),
        c.s("tradingClass"),
        c.s("multiplier"),
        c.all("expiration"),
        [float(s) for s in c.all("strike")],
    ),
    "securityDefinitionOptionParameterEnd": lambda enc, c: enc.sec_def_opt_params_end(c.i("reqId")),
    "tickPrice 68 (delayed last)": _tick_price,
    "tickPrice 1 (option bid -1, attrib 1)": _tick_price,
    "tickPrice 37 (mark)": _tick_price,
    "tickSize 74 (delayed volume)": lambda enc, c: enc.tick_size(c.i("reqId"), c.i("sizeTickType"), float(c.s("size"))),
    "tickSize 89": lambda enc, c: enc.tick_size(c.i("reqId"), c.i("sizeTickType"), float(c.s("size"))),
    "marketDataType": lambda enc, c: enc.market_data_type(c.i("reqId"), c.i("marketDataType")),
    "tickSnapshotEnd": lambda enc, c: enc.tick_snapshot_end(c.i("reqId")),
    "tickReqParams": lambda enc, c: enc.tick_req_params(
        c.i("tickerId"), c.f("minTick"), c.s("bboExchange"), c.i("snapshotPermissions")
    ),
    "tickReqParams (no minTick)": lambda enc, c: enc.tick_req_params(
        c.i("tickerId"), c.f("minTick"), c.s("bboExchange"), c.i("snapshotPermissions")
    ),
    "tickGeneric 46": lambda enc, c: enc.tick_generic(c.i("reqId"), c.i("tickType"), float(c.s("value"))),
    "tickString 88": lambda enc, c: enc.tick_string(c.i("reqId"), c.i("tickType"), c.s("value")),
    "tickOptionComputation 10 (all not-computed)": _tick_option_not_computed,
    "tickOptionComputation 53 (calculateOptionPrice reply)": _tick_option_computation,
    "managedAccounts": lambda enc, c: enc.managed_accounts(c.s("accountsList").split(",")),
    "nextValidId": lambda enc, c: enc.next_valid_id(c.i("orderId")),
    "error 2104 (farm notice)": lambda enc, c: enc.error(
        c.i("reqId"), c.i("errorCode"), c.s("errorString"), c.i("errorTime"), c.s("advancedOrderRejectJson")
    ),
    "currentTime": lambda enc, c: enc.current_time(c.i("time")),
    "position AMZN STK": _position,
    "positionEnd": lambda enc, c: enc.position_end(),
    "accountSummary BuyingPower": lambda enc, c: enc.account_summary(
        c.i("reqId"), c.s("account"), c.s("tag"), c.s("value"), c.s("currency")
    ),
    "accountSummaryEnd": lambda enc, c: enc.account_summary_end(c.i("reqId")),
    "orderStatus PreSubmitted": _order_status,
    "openOrder OBDC OPT (live base layout, 156 fields)": _open_order,
    "openOrderEnd": lambda enc, c: enc.open_order_end(),
    "execDetails": _exec_details,
    "commissionAndFeesReport": _commission,
    "completedOrder TRAIL LIMIT": _completed_order,
    "completedOrdersEnd": lambda enc, c: enc.completed_orders_end(),
    "updateAccountValue": lambda enc, c: enc.account_value(c.s("key"), c.s("val"), c.s("currency"), c.s("accountName")),
    "updatePortfolio": _portfolio,
    "updateAccountTime": lambda enc, c: enc.account_time(c.s("timeStamp")),
    "accountDownloadEnd": lambda enc, c: enc.account_download_end(c.s("accountName")),
    "managedAccounts (sv203, raw-int id)": lambda enc, c: enc.managed_accounts(c.s("accountsList").split(",")),
    "nextValidId 448 (sv203)": lambda enc, c: enc.next_valid_id(c.i("orderId")),
    "currentTime (sv203, raw-int id)": lambda enc, c: enc.current_time(c.i("time")),
}


class TextCapturesTest(unittest.TestCase):
    """Every text capture, written again by the fake's encoder at the capture's server version."""

    @classmethod
    def setUpClass(cls):
        cls.captures = [c for c in load_captures() if not c["protobuf"]]

    def test_the_captures_are_there(self):
        self.assertGreaterEqual(len(self.captures), 40)
        self.assertEqual({c["server_version"] for c in self.captures}, {200, 203})

    def test_every_text_capture_has_its_inputs_here(self):
        """A capture added to the file without a builder here fails instead of going unchecked."""
        self.assertEqual(sorted(c["name"] for c in self.captures if c["name"] not in BUILDERS), [])

    def test_ibapi_reads_every_capture_completely(self):
        for capture in self.captures:
            with self.subTest(capture["name"]):
                self.assertEqual(len(field_meanings(capture)), len(text_fields(capture)) + 1)

    def test_the_fake_writes_each_text_message_as_tws_does(self):
        for capture in self.captures:
            build = BUILDERS.get(capture["name"])
            if build is None:
                continue
            with self.subTest(capture["name"], server_version=capture["server_version"]):
                enc = Encoder(capture["server_version"])
                got = enc.payload(build(enc, Captured(capture)))
                differences = field_differences(capture, got)
                if differences:
                    shown = differences[:40] + (
                        [f"... and {len(differences) - 40} more"] if len(differences) > 40 else []
                    )
                    self.fail(
                        f"{capture['name']} at {capture['server_version']}: {len(differences)} field(s) differ "
                        f"from real TWS:\n  " + "\n  ".join(shown)
                    )


class _RawClient:
    """A bare socket client: handshake, startApi, raw text requests, raw payloads back."""

    def __init__(self, port: int, version: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        offer = f"v100..{version}".encode()
        self.sock.sendall(b"API\0" + struct.pack(">I", len(offer)) + offer)
        self.reader = FrameReader()
        self.pending: List[bytes] = []
        self.read_until(lambda payload: True)  # the handshake reply
        self.send([71, 2, 0, ""])  # startApi, client id 0

    def send(self, fields: list) -> None:
        self.sock.sendall(frame(fields))

    def read_until(self, done: Callable[[bytes], bool], timeout_s: float = 5.0) -> List[bytes]:
        got, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while self.pending:
                payload = self.pending.pop(0)
                got.append(payload)
                if done(payload):
                    return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            self.reader.feed(data)
            self.pending += self.reader.payloads()
        raise AssertionError(f"timed out; got {len(got)} messages")

    def close(self) -> None:
        self.sock.close()


class RunningFakeTest(unittest.TestCase):
    """The rules the session applies (not only the encoder): a live option quote with no bid, asked
    of the running fake at 200, must come as the recorded frames do: bid -1.00 with size 0 and
    attribute mask 1, and the bid's greeks row all "not computed". Only the request id differs."""

    def test_an_option_without_a_bid_as_tws_sends_it(self):
        captures = {c["name"]: c for c in load_captures()}
        tws = FakeTWS(port=0, max_server_version=200, tick_delay_ms=(0, 1))
        port = tws.start()
        self.addCleanup(tws.stop)
        market = tws.market
        option = next(o for o in market.options("SPY") if market.quote(o).bid < 0)
        client = _RawClient(port, 200)
        self.addCleanup(client.close)
        client.read_until(lambda p: p.startswith(b"9\0"))  # nextValidId
        client.send(
            [
                1,
                11,
                5,
                option.con_id,
                option.symbol,
                "OPT",
                option.expiry,
                option.strike,
                option.right,
                option.multiplier,
                "SMART",
                "",
                "USD",
                option.local_symbol,
                option.trading_class,
                0,
                "",
                0,
                0,
                "",
            ]
        )
        seen = client.read_until(lambda p: p.startswith(b"21\0") and p.split(b"\0")[2] == b"13")
        by_kind = {tuple(p.split(b"\0")[:3:2] if p.startswith(b"21\0") else p.split(b"\0")[:4:3]): p for p in seen}
        for name, key in (
            ("tickPrice 1 (option bid -1, attrib 1)", (b"1", b"1")),
            ("tickOptionComputation 10 (all not-computed)", (b"21", b"10")),
        ):
            with self.subTest(name):
                self.assertIn(key, by_kind, f"the fake sent no {name}")
                differences = field_differences(captures[name], by_kind[key])
                self.assertFalse([d for d in differences if "(reqId)" not in d], differences)


if __name__ == "__main__":
    unittest.main()
