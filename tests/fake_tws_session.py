"""One client connection to the fake TWS: handshake, pacing, and the request handlers.

Handlers are `_on_<EClient method name>(**params)`; the params come from
`fake_tws_proto_requests.parse_payload` (text fields or a protobuf body, by version and message
id). The connection, reference data and market data handlers are here; the account and order
handlers are `fake_tws_account.AccountHandlers`'s. Shared state (lines, orders, market, stats)
lives on the server.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, Dict, FrozenSet, List, Optional

from tests.fake_listings import Instrument
from tests.fake_market import Quote
from tests.fake_tws_account import AccountHandlers
from tests.fake_tws_formats import tick_attrib_mask
from tests.fake_tws_framing import API_PREFIX, FrameReader, frame, parse_version_range
from tests.fake_tws_proto import make_encoder
from tests.fake_tws_proto_requests import parse_payload
from tests.fake_tws_requests import ProtocolError
from tests.fake_tws_wire import MIN_SERVER_VERSION, Encoder

SOCKET_TIMEOUT_S = 5.0
PACING_WINDOW_S = 1.0
PACING_STRIKES = 3  # reject mode: disconnect on this many violations
HANG_UP_DRAIN_S = 0.5  # input drained between the last error 100 and the close
UPDATE_INTERVAL_S = (0.25, 1.0)

FARM_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
NO_SECURITY_TEXT = "No security definition has been found for the request"

# Live tick type -> the delayed one TWS sends instead (market data type 3/4 without a subscription).
DELAYED_TICK = {0: 69, 1: 66, 2: 67, 3: 70, 4: 68, 5: 71, 8: 74, 9: 75, 10: 80, 11: 81, 12: 82, 13: 83}
BID, ASK, LAST, CLOSE, VOLUME = 1, 2, 4, 9, 8
BID_SIZE, ASK_SIZE, LAST_SIZE = 0, 3, 5
CALL_OI, PUT_OI, CALL_VOLUME, PUT_VOLUME, IMPLIED_VOL = 27, 28, 29, 30, 24
BID_COMP, ASK_COMP, LAST_COMP, MODEL_COMP = 10, 11, 12, 13
# --stream-notice codes: TWS's text, then "<symbol> <exchange>/TOP/ALL" of the data not subscribed.
STREAM_NOTICES = {
    10090: "Part of requested market data is not subscribed. Subscription-independent ticks are still "
    "active.Delayed market data is not available.",
    10091: "Part of requested market data requires additional subscription for API. See link in 'Market "
    "Data Connections' dialog for more details.Delayed market data is available.",
}


@dataclass
class Subscription:
    req_id: int
    instrument: Instrument
    generic_ticks: FrozenSet[int]
    snapshot: bool
    delayed: bool
    snapshot_end: float = 0.0  # monotonic time of tickSnapshotEnd; the line is held until then
    data_type: int = 1  # what marketDataType said: 1 live, 2 frozen, 3 delayed, 4 delayed-frozen
    no_quote: bool = False  # market closed, live/delayed type: bid/ask -1, no greeks, nothing moves
    no_greeks: bool = False  # a --stream-notice: the underlying's data is not subscribed


class ClientSession(AccountHandlers):
    """Reads one socket on its own thread; sends from any thread (one lock per socket)."""

    def __init__(self, server, sock: socket.socket):
        self.server = server
        self.market = server.market
        self.sock = sock
        self.client_id: Optional[int] = None  # set once startApi is accepted
        self.encoder: Optional[Encoder] = None
        self.market_data_type: Optional[int] = None  # None until reqMarketDataType
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._subs: Dict[int, Subscription] = {}
        self._window: Deque[float] = deque()
        self._violations = 0
        self._hanging_up = False
        self._thread = threading.Thread(target=self._run, name="fake-tws-client", daemon=True)

    def start(self) -> None:
        self.sock.settimeout(SOCKET_TIMEOUT_S)
        self._thread.start()

    # ---- socket ------------------------------------------------------------------------------

    def send(self, message) -> None:
        """One message, framed for the negotiated version by the encoder."""
        self._send_bytes(self.encoder.frame(message))

    def _send_bytes(self, data: bytes) -> None:
        try:
            with self._send_lock:
                if not self._closed:
                    self.sock.sendall(data)
        except OSError:
            self.close()

    def send_error(self, req_id: int, code: int, text: str, advanced_reject_json: str = "") -> None:
        if self.encoder is not None:
            self.server.count_error(code)
            self.send(self.encoder.error(req_id, code, text, int(time.time() * 1000), advanced_reject_json))

    def close(self, abort: bool = False) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            subs, self._subs = self._subs, {}
        if abort:  # reset instead of a clean FIN; SHUT_RD below still wakes our blocked recv
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.sock.shutdown(socket.SHUT_RD if abort else socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.server.session_closed(self, lines_held=len(subs))

    def _recv(self, reader: FrameReader) -> bool:
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not data:
                return False
            reader.feed(data)
            return True

    def _run(self) -> None:
        try:
            reader = FrameReader()
            if self._handshake(reader):
                while not self._closed:
                    for payload in reader.payloads():
                        if self._closed:
                            break
                        self._on_message(payload)
                    if not self._recv(reader):
                        break
        finally:
            self.close()

    def _handshake(self, reader: FrameReader) -> bool:
        prefixed = None
        while prefixed is None:
            if not self._recv(reader):
                return False
            prefixed = reader.take_prefix(API_PREFIX)
        if not prefixed:
            return False
        payloads = reader.payloads()
        while not payloads:
            if not self._recv(reader):
                return False
            payloads = reader.payloads()
        try:
            low, high, _ = parse_version_range(payloads[0].decode("ascii", errors="replace"))
        except ProtocolError:
            return False
        version = min(high, self.server.max_server_version)
        if version < max(low, MIN_SERVER_VERSION):
            return False
        self.encoder = make_encoder(version)
        # The handshake reply is plain fields at every version: no message id to frame.
        self._send_bytes(frame(self.encoder.handshake(time.strftime("%Y%m%d %H:%M:%S %Z"))))
        for payload in payloads[1:]:
            self._on_message(payload)
        return True

    # ---- dispatch and pacing -----------------------------------------------------------------

    def _on_message(self, payload: bytes) -> None:
        self.server.count("messages_in")
        if not self._admit():
            return
        try:
            name, params = parse_payload(payload, self.encoder.v)
        except ProtocolError as exc:
            self.send_error(-1, 320, f"Error reading request. Unable to parse data. {exc}")
            return
        if self.client_id is None and name != "startApi":
            return
        self.server.count_request(name)
        handler = getattr(self, f"_on_{name}", None)
        if handler is not None:
            handler(**params)

    def _admit(self) -> bool:
        """Sliding 1 s window over received messages; True when the message may be processed."""
        server, window = self.server, self._window
        if self._hanging_up:
            return False
        now = time.monotonic()
        while window and now - window[0] >= PACING_WINDOW_S:
            window.popleft()
        if len(window) < server.max_rate:
            window.append(now)
            return True
        server.count("pacing_violations")
        if server.pacing == "queue":
            time.sleep(max(0.0, window[0] + PACING_WINDOW_S - now))
            window.popleft()
            window.append(time.monotonic())
            return True
        window.append(now)
        self._violations += 1
        self.send_error(
            -1, 100, f"Max rate of messages per second has been exceeded:max={server.max_rate} rec={len(window)} (1)"
        )
        if self._violations >= PACING_STRIKES:
            self._hang_up_after_error()
        return False

    def hang_up(self) -> None:
        """End the connection after what was sent (TWS dropping a client after its last error)."""
        self._hang_up_after_error()

    def _hang_up_after_error(self) -> None:
        """Like TWS: the error arrives, then the connection ends. Closing at once with the client's
        burst still unread would reset the connection, and the client could lose the error: so
        send FIN now, keep draining (and ignoring) input for a moment, then close."""
        self._hanging_up = True
        try:
            with self._send_lock:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        timer = threading.Timer(HANG_UP_DRAIN_S, self.close)
        timer.daemon = True
        timer.start()

    # ---- connection --------------------------------------------------------------------------

    def _on_startApi(self, client_id: int, optional_capabilities: str) -> None:
        if self.client_id is not None:
            return
        if not self.server.claim_client_id(self, client_id):
            self.send_error(
                -1, 326, "Unable to connect as the client id is already in use. Retry with a unique client id."
            )
            self.close()
            return
        enc = self.encoder
        self.send(enc.managed_accounts(self.server.accounts))
        self.send(enc.next_valid_id(self.server.orders.next_order_id))
        for code, text in FARM_NOTICES:
            self.send_error(-1, code, text)

    def _on_reqIds(self, num_ids: int) -> None:
        self.send(self.encoder.next_valid_id(self.server.orders.next_order_id))

    def _on_reqCurrentTime(self) -> None:
        self.send(self.encoder.current_time(int(time.time())))

    def _on_reqManagedAccts(self) -> None:
        self.send(self.encoder.managed_accounts(self.server.accounts))

    def _on_reqMarketDataType(self, market_data_type: int) -> None:
        self.market_data_type = market_data_type

    # ---- reference data ----------------------------------------------------------------------

    def _resolve(self, contract: Dict) -> List[Instrument]:
        exchange = contract["exchange"]
        found = self.market.find(
            **{
                k: contract.get(k, "")
                for k in (
                    "con_id",
                    "symbol",
                    "sec_type",
                    "expiry",
                    "strike",
                    "right",
                    "trading_class",
                    "multiplier",
                    "currency",
                    "local_symbol",
                    "primary_exchange",
                )
            }
        )
        # An index is not routed: it is found on its own exchange (CBOE, NASDAQ...), never on SMART.
        return [
            i
            for i in found
            if not exchange
            or (exchange == "SMART" and i.sec_type != "IND")
            or exchange == i.primary_exchange
            or exchange in i.valid_exchanges.split(",")
        ]

    def _resolve_one(self, req_id: int, contract: Dict) -> Optional[Instrument]:
        found = self._resolve(contract)
        if len(found) == 1:
            return found[0]
        self.send_error(
            req_id,
            200,
            NO_SECURITY_TEXT
            if not found
            else f"The contract description specified for {contract['symbol']} is ambiguous.",
        )
        return None

    def _on_reqContractDetails(self, req_id: int, contract: Dict, include_expired: bool) -> None:
        found = self._resolve(contract)
        if not found:
            self.send_error(req_id, 200, NO_SECURITY_TEXT)
            return
        for instrument in found:
            # the exchange asked for; without one, SMART (an index: its own exchange)
            exchange = contract["exchange"] or ("SMART" if instrument.sec_type != "IND" else instrument.exchange)
            self.send(self.encoder.contract_data(req_id, replace(instrument, exchange=exchange)))
        self.send(self.encoder.contract_data_end(req_id))

    def _on_reqSecDefOptParams(self, req_id: int, symbol: str, exchange: str, sec_type: str, con_id: int) -> None:
        underlying = self.market.underlying(symbol.upper())
        if underlying is None or (con_id and con_id != underlying.con_id):
            self.send_error(req_id, 200, NO_SECURITY_TEXT)
            return
        # One row per exchange and trading class (SPX and SPXW, XYZ and its adjusted XYZ1), each
        # with that class's own expirations and strikes.
        classes = self.market.chain_classes(underlying.symbol)
        for listed_on in self.market.specs[underlying.symbol].option_exchanges:
            if exchange and exchange != listed_on:
                continue
            for trading_class, multiplier, expirations, strikes in classes:
                self.send(
                    self.encoder.sec_def_opt_params(
                        req_id, listed_on, underlying.con_id, trading_class, multiplier, expirations, strikes
                    )
                )
        self.send(self.encoder.sec_def_opt_params_end(req_id))

    # ---- market data -------------------------------------------------------------------------

    def _on_reqMktData(
        self, req_id: int, contract: Dict, generic_ticks: str, snapshot: bool, regulatory_snapshot: bool
    ) -> None:
        enc, server = self.encoder, self.server
        if req_id in self._subs:
            self.send_error(req_id, 322, "Error processing request.-'bW' : cause - Duplicate ticker id")
            return
        instrument = self._resolve_one(req_id, contract)
        if instrument is None:
            return
        generic = frozenset(int(t) for t in generic_ticks.split(",") if t.strip().isdigit())
        snapshot = snapshot or regulatory_snapshot
        if snapshot and generic:
            self.send_error(
                req_id,
                321,
                "Error validating request.-'bW' : cause - Snapshot market data "
                "subscription is not applicable to generic ticks",
            )
            return
        # The type TWS serves this request (its marketDataType callback): live where subscribed, or
        # with the market closed and frozen / delayed-frozen asked the values recorded at the close;
        # without a subscription 354 unless delayed (3/4) was asked, then delayed data after 10167.
        asked, closed = self.market_data_type or 1, server.market_closed
        delayed = False
        if server.no_live_data:
            if asked not in (3, 4):
                self.send_error(
                    req_id, 354, "Requested market data is not subscribed.Delayed market data is available."
                )
                return
            self.send_error(req_id, 10167, "Requested market data is not subscribed. Displaying delayed market data.")
            delayed = True
            data_type = 4 if closed and asked == 4 else 3
            generic = frozenset()  # delayed data: its default ticks only (the agent asks none there)
        else:
            data_type = 2 if closed and asked in (2, 4) else 1
        if not server.acquire_line():
            self.send_error(req_id, 101, "Max number of tickers has been reached")
            return
        notices = server.stream_notices if instrument.sec_type == "OPT" else ()
        sub = Subscription(
            req_id,
            instrument,
            generic,
            snapshot,
            delayed,
            time.monotonic() + server.snapshot_duration() if snapshot else 0.0,
            data_type=data_type,
            no_quote=closed and data_type in (1, 3),
            no_greeks=bool(notices),
        )
        with self._state_lock:
            if self._closed:
                server.release_line()
                return
            self._subs[req_id] = sub
        self.send(enc.tick_req_params(req_id, instrument.min_tick, "9c0001", 4))  # as recorded
        if self.market_data_type is not None or delayed:
            self.send(enc.market_data_type(req_id, data_type))
        for code in notices:  # the stream goes on: without the underlying's data, no greeks
            self.send_error(
                req_id,
                code,
                f"{STREAM_NOTICES[code]}{instrument.symbol} {self._underlying_exchange(instrument)}/TOP/ALL",
            )
        server.call_later(server.tick_delay(), lambda: self._emit(sub, first=True))

    def _underlying_exchange(self, instrument: Instrument) -> str:
        underlying = self.market.underlying(instrument.symbol)
        primary = underlying.primary_exchange if underlying is not None else ""
        return "NASDAQ.NMS" if primary == "NASDAQ" else primary or "SMART"

    def _on_cancelMktData(self, req_id: int) -> None:
        self._end_subscription(req_id)

    def _end_subscription(self, req_id: int) -> None:
        with self._state_lock:
            sub = self._subs.pop(req_id, None)
        if sub is not None:
            self.server.release_line()

    def _is_live(self, sub: Subscription) -> bool:
        with self._state_lock:
            return self._subs.get(sub.req_id) is sub

    def _emit(self, sub: Subscription, first: bool) -> None:
        """Scheduler thread: the full tick set first, then small updates until cancelled."""
        if not self._is_live(sub):
            return
        instrument = sub.instrument
        if not first:
            self.market.drift(instrument.symbol)
        quote = self.market.quote(instrument)
        if sub.no_quote:  # market closed: no current bid/ask, nothing to compute greeks from
            quote = replace(quote, bid=-1.0, ask=-1.0, bid_size=0, ask_size=0, greeks=None)
        elif sub.no_greeks:
            quote = replace(quote, greeks=None)
        for fields in self._full_ticks(sub, quote) if first else self._update_ticks(sub, quote):
            self.send(fields)
        if sub.snapshot:
            self.server.call_later(max(0.0, sub.snapshot_end - time.monotonic()), lambda: self._end_snapshot(sub))
            return
        if self.server.market_closed:  # nothing moves: the stream holds its line, silent, until cancelled
            return
        with self.server.lock:
            delay = self.server.rng.uniform(*UPDATE_INTERVAL_S)
        self.server.call_later(delay, lambda: self._emit(sub, first=False))

    def _end_snapshot(self, sub: Subscription) -> None:
        if self._is_live(sub):
            self.send(self.encoder.tick_snapshot_end(sub.req_id))
            self._end_subscription(sub.req_id)

    def _tick(self, sub: Subscription, tick_type: int) -> int:
        return DELAYED_TICK.get(tick_type, tick_type) if sub.delayed else tick_type

    def _price(self, sub: Subscription, tick_type: int, price: float, size: float) -> list:
        """A tickPrice with the attribute mask TWS sets for that tick type."""
        tick = self._tick(sub, tick_type)
        return self.encoder.tick_price(sub.req_id, tick, price, size, tick_attrib_mask(tick))

    def _full_ticks(self, sub: Subscription, q: Quote) -> List[list]:
        enc, r, t = self.encoder, sub.req_id, lambda tick: self._tick(sub, tick)
        if sub.instrument.sec_type == "IND":  # an index: its value and close, no bid/ask/size
            ticks = [self._price(sub, LAST, q.last, 0), self._price(sub, CLOSE, q.close, 0)]
            if 106 in sub.generic_ticks:
                ticks.append(enc.tick_generic(r, IMPLIED_VOL, q.implied_vol))
            return ticks
        ticks = [self._price(sub, BID, q.bid, q.bid_size), self._price(sub, ASK, q.ask, q.ask_size)]
        if q.last > 0:
            ticks += [self._price(sub, LAST, q.last, q.last_size), enc.tick_size(r, t(LAST_SIZE), q.last_size)]
        ticks += [enc.tick_size(r, t(VOLUME), q.volume), self._price(sub, CLOSE, q.close, 0)]
        is_call = sub.instrument.right == "C"
        if sub.instrument.sec_type == "OPT":
            volumes = [(CALL_VOLUME if is_call else PUT_VOLUME, q.volume)]
            interests = [(CALL_OI if is_call else PUT_OI, q.open_interest)]
        else:
            volumes = [(CALL_VOLUME, q.call_volume), (PUT_VOLUME, q.put_volume)]
            interests = [(CALL_OI, q.call_open_interest), (PUT_OI, q.put_open_interest)]
        if 100 in sub.generic_ticks:
            ticks += [enc.tick_size(r, tick, size) for tick, size in volumes]
        if 101 in sub.generic_ticks:
            ticks += [enc.tick_size(r, tick, size) for tick, size in interests]
        if 106 in sub.generic_ticks:  # tick 24 is the underlying's implied vol, on an option's stream too
            ticks.append(
                enc.tick_generic(
                    r,
                    IMPLIED_VOL,
                    self.market.specs[sub.instrument.symbol].vol if sub.instrument.sec_type == "OPT" else q.implied_vol,
                )
            )
        if q.greeks is not None:
            ticks += [
                self._computation(sub, q, tick, price)
                for tick, price in ((BID_COMP, q.bid), (ASK_COMP, q.ask), (LAST_COMP, q.last), (MODEL_COMP, None))
            ]
        return ticks

    def _update_ticks(self, sub: Subscription, q: Quote) -> List[list]:
        enc, r, t = self.encoder, sub.req_id, lambda tick: self._tick(sub, tick)
        if sub.instrument.sec_type == "IND":
            return [self._price(sub, LAST, q.last, 0)]
        ticks = [
            self._price(sub, BID, q.bid, q.bid_size),
            self._price(sub, ASK, q.ask, q.ask_size),
            enc.tick_size(r, t(BID_SIZE), q.bid_size),
            enc.tick_size(r, t(ASK_SIZE), q.ask_size),
        ]
        if q.greeks is not None:
            ticks.append(self._computation(sub, q, MODEL_COMP, None))
        return ticks

    def _computation(self, sub: Subscription, q: Quote, tick_type: int, price: Optional[float]) -> list:
        """A tickOptionComputation at `price` (None: the model's); TWS's "not computed" row (every
        value its sentinel, the underlying's price too) when there is no such price."""
        greeks = q.greeks if price is None else self.market.side_greeks(sub.instrument, q, price)
        if greeks is None:
            return self.encoder.tick_option_not_computed(sub.req_id, self._tick(sub, tick_type))
        return self.encoder.tick_option_computation(
            sub.req_id,
            self._tick(sub, tick_type),
            greeks.implied_vol,
            greeks.delta,
            greeks.opt_price,
            0.0,
            greeks.gamma,
            greeks.vega,
            greeks.theta,
            greeks.und_price,
        )
