"""A fake TWS / IB Gateway on loopback, for tests, benchmarks and reviewers (DESIGN.md 6).

`python -m tests.fake_tws --port 0 [options]` prints `fake_tws listening on 127.0.0.1:PORT` and
serves until SIGTERM/SIGINT (exit 0, stats file written). From tests:
`FakeTWS(port=0, ...).start() -> port`, `stats()`, `drop_all()`, `restart(down_s)`,
`broadcast_error(code, text)`, `stop()`.

It speaks the TWS socket protocol at server versions 100 (ibapi's MIN_CLIENT_VER) up to the pinned
ibapi's MAX_CLIENT_VER (default, and what current TWS answers: that newest version), each field laid
out as the ibapi decoder reads it at that version: text up to 200, and from 201 the protobuf bodies
of the message groups each version moves (`fake_tws_proto.py`). `API\\0` +
version range, answered with min(client max, max_server_version), then after startApi:
managedAccounts, nextValidId, notices 2104/2106/2158 (a busy client id gets 326 and is closed).
It serves:

- reqContractDetails (STK, IND, OPT; error 200 for a contract the market does not list, or one
  that matches several: an SPX monthly without its trading class), reqSecDefOptParams (one row per
  exchange and trading class, each with that class's expirations and strikes, then the end),
  reqCurrentTime, reqIds, reqManagedAccts
- reqMktData / cancelMktData: streaming ticks (bid/ask/last/close with sizes, volume, generic 100
  -> option volume 29/30, 101 -> open interest 27/28, 106 -> implied vol 24, option computations
  10-13) after --tick-delay-ms, then small updates every 0.25-1 s; snapshots (default ticks, then
  tickSnapshotEnd --snapshot-ms after the request: at once by default, TWS takes 11 s);
  tickReqParams; marketDataType once reqMarketDataType was called, saying per request what TWS
  serves: 1 live, 2 frozen (market closed, type 2/4 asked), 3 delayed, 4 delayed-frozen (closed, 4
  asked). One line per live subscription or pending snapshot (until its tickSnapshotEnd): past
  --max-lines, error 101. --no-live-data: 354 for types 1/2, else 10167 plus delayed ticks (66-75,
  80-83) and no generic ticks. --market-closed: types 1/3 get bid/ask -1 (size 0) and no greeks,
  types 2/4 the values recorded at the close; nothing moves after the first ticks. --stream-notice
  10090,10091: those notices on every option stream, which goes on without greeks (the
  underlying's data is what is missing). move_port(): 1300 naming a new port, then the drop.
- reqPositions, reqPositionsMulti, reqAccountSummary, reqAccountUpdates, reqAccountUpdatesMulti,
  reqExecutions (+ commission reports; lastNDays days back from server version 200, today's
  only without it, as TWS), reqCompletedOrders
- placeOrder / cancelOrder / reqGlobalCancel, reqOpenOrders / reqAllOpenOrders / reqAutoOpenOrders:
  openOrder + orderStatus; marketable limits fill at once (execDetails); 110 off-tick price,
  201 quantity > 1000 or unknown account. A cancel is answered as TWS does: openOrder and
  orderStatus PendingCancel, orderStatus Cancelled, error 202; a filled or cancelled order gets 161
  ("not in a cancellable state"), an unknown one 10147 (also another client's: TWS looks the id
  up among the asking client's orders). Warnings that leave the order live, PreSubmitted, sent
  before its messages: 399 "Order Message: ... Warning: your order will not be placed at the
  exchange until <next open> US/Eastern" with --market-closed; 404 "Order held while securities
  are located." for a short sale of MRGT (hard to borrow). reject_after_accept(reason): the next
  order is accepted (PreSubmitted), then turns Inactive with error 201. A what-if order (order.whatIf) gets one
  openOrder whose state carries margin before/change/after and commission, and is never booked.
  --place-delay-ms MS: each (non-what-if) placeOrder is acted on only MS later, as behind TWS's
  precaution dialog: no openOrder/orderStatus, not in open orders until then, other messages flow.
  orders_placed counts orders booked (what-if excluded), once each;
  --read-only answers order actions and order information with 321.
- pacing: more than --max-rate messages in any 1 s window per connection is a violation;
  reject: error 100, message dropped, disconnect on the 3rd; queue: processed late, counted.
- TWS's other refusals: 322 duplicate ticker id, 321 snapshot with generic ticks, 320 unreadable
  request.

Underlyings: AAPL, MSFT, SPY (8-12 weekly/monthly/LEAPS expirations each, one trading class named
after the symbol; SPY also expires on each of the next 10 weekdays, each of its dailies and
weeklies listing only part of the strike union reqSecDefOptParams gives), MRGT, a thinly traded
merger target (3 monthlies, most options without a bid), SPX, an index (IND on CBOE, last/close
only) with trading classes SPX (monthlies) and SPXW (weeklies and the PM-settled monthlies), and
XYZ with an adjusted class XYZ1 (multiplier 150, monthlies, strikes around the pre-adjustment
price) beside its standard class; TWIN, listed twice as a USD stock (NYSE, and PINK over the
counter): reqContractDetails lists both, market data or an order for it without a primary exchange
or conId gets error 200 "The contract description specified for TWIN is ambiguous."; the indexes
XSP (CBOE), NDX (NASDAQ, weekly class NDXP), RUT (RUSSELL, RUTW), VIX (CBOE, VIXW). An index is found
on its own exchange (or none), never on SMART. Frames match the real ones in
../shared/tws-captures/ field for field (tests/test_fake_tws_captures.py). Stats also count every
error code sent (`errors_sent`).

Instruments, conIds and first quotes depend only on --seed and today's date. Modules: this one
(server, shared lines/orders/stats, CLI), `fake_tws_session.py` (one connection: handshake, pacing,
connection, reference data and market data handlers), `fake_tws_account.py` (its account and order
handlers), `fake_tws_framing.py` (framing), `fake_tws_wire.py` (version-gated text encoders),
`fake_tws_requests.py` (text request parsing), `fake_tws_proto_requests.py` (reading a client
message, text or protobuf), `fake_tws_formats.py` (how TWS writes each number), `fake_tws_proto.py`
(the protobuf messages of versions >= 201 and their version table), `fake_listings.py` (what is
listed: underlyings, chain listing rules, reference data), `fake_market.py` (instruments, chains,
Black-Scholes quotes), `fake_account.py` (order book, fills, positions, account values).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tests.fake_account import OrderBook, Portfolio
from tests.fake_market import Market
from tests.fake_tws_session import ClientSession
from tests.fake_tws_wire import MAX_SERVER_VERSION, MIN_SERVER_VERSION

STAT_KEYS = (
    "connections",
    "messages_in",
    "pacing_violations",
    "line_limit_errors",
    "max_lines_in_use",
    "orders_placed",
)
STATS_INTERVAL_S = 0.5


class Scheduler:
    """One thread running callbacks at given times (market-data emissions)."""

    def __init__(self):
        self._heap: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fake-tws-ticks", daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), fn))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # one bad emission must not stop every stream
                traceback.print_exc()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=2.0)


class FakeTWS:
    """The server: listening socket, client sessions, shared lines/orders/stats."""

    def __init__(
        self,
        port: int = 0,
        accounts: Sequence[str] = ("DU1234567",),
        max_rate: int = 50,
        pacing: str = "queue",
        max_lines: int = 100,
        read_only: bool = False,
        no_live_data: bool = False,
        busy_client_ids: Sequence[int] = (),
        tick_delay_ms: Tuple[int, int] = (5, 30),
        snapshot_ms: Tuple[int, int] = (0, 0),
        seed: int = 1,
        max_server_version: int = MAX_SERVER_VERSION,
        stats_file: Optional[str] = None,
        place_delay_ms: int = 0,
        host: str = "127.0.0.1",
        market_closed: bool = False,
        stream_notices: Sequence[int] = (),
    ):
        if pacing not in ("reject", "queue"):
            raise ValueError("pacing must be 'reject' or 'queue'")
        if not MIN_SERVER_VERSION <= max_server_version <= MAX_SERVER_VERSION:
            raise ValueError(f"max_server_version must be in {MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}")
        if not accounts:
            raise ValueError("at least one account")
        self.host, self.port = host, port
        self.accounts = list(accounts)
        self.max_rate, self.pacing, self.max_lines = max_rate, pacing, max_lines
        self.read_only, self.no_live_data = read_only, no_live_data
        self.busy_client_ids = set(busy_client_ids)
        self.tick_delay_s = (tick_delay_ms[0] / 1000.0, tick_delay_ms[1] / 1000.0)
        self.snapshot_s = (snapshot_ms[0] / 1000.0, snapshot_ms[1] / 1000.0)
        if place_delay_ms < 0:
            raise ValueError("place_delay_ms must be >= 0")
        self.place_delay_s = place_delay_ms / 1000.0  # placeOrder acted on this much later (0: at once)
        self.market_closed = market_closed  # live/delayed: bid/ask -1, no greeks; frozen types: the close
        unknown = set(stream_notices) - {10090, 10091}
        if unknown:
            raise ValueError(f"stream_notices: {sorted(unknown)} (known: 10090, 10091)")
        self.stream_notices = tuple(stream_notices)  # sent on every option stream, which goes on
        self.max_server_version = max_server_version
        self.stats_file = stats_file
        self.market = Market(seed)
        self.portfolio = Portfolio(self.market, self.accounts)
        self.orders = OrderBook(seed)
        self.late_rejections: List[Tuple[str, float]] = []  # reject_after_accept(): (reason, after s)
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self._sessions: List[ClientSession] = []
        self._counters: Counter = Counter()
        self._requests: Counter = Counter()
        self._errors: Counter = Counter()
        self.lines_in_use = 0
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._scheduler: Optional[Scheduler] = None
        self._stats_thread: Optional[threading.Thread] = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> int:
        self._scheduler = Scheduler()
        self._listen()
        if self.stats_file:
            self._stats_thread = threading.Thread(target=self._write_stats_forever, name="fake-tws-stats", daemon=True)
            self._stats_thread.start()
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        self.drop_all()
        if self._scheduler:
            self._scheduler.stop()
        if self._stats_thread:
            self._stats_thread.join(timeout=2.0)
        if self.stats_file:
            self.write_stats()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="fake-tws-accept", daemon=True
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            session = ClientSession(self, sock)
            with self.lock:
                self._sessions.append(session)
                self._counters["connections"] += 1
            session.start()

    def drop_all(self) -> None:
        """Close every client socket abruptly (RST), like a crashing TWS."""
        with self.lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close(abort=True)

    def restart(self, down_s: float = 0.0) -> None:
        """TWS's daily restart: drop everyone, refuse connections for down_s, listen again on the
        same port. Returns once listening again."""
        self._close_listener()
        self.drop_all()
        time.sleep(down_s)
        if not self._stopping.is_set():
            self._listen()

    def move_port(self, new_port: int = 0) -> int:
        """What changing the API port in TWS's settings does: listen on the new port, send 1300 naming
        it to every client, and drop them (after the error, like TWS). Returns the new port."""
        old_listener, old_thread = self._listener, self._accept_thread
        self._listener = None
        if old_listener is not None:
            old_listener.close()
        if old_thread is not None:
            old_thread.join(timeout=2.0)
        self.port = new_port
        self._listen()
        for session in self.ready_sessions():
            session.send_error(
                -1,
                1300,
                "TWS socket port has been reset and this connection is being dropped. "
                f"Please reconnect on the new port - {self.port}",
            )
            session.hang_up()
        return self.port

    def broadcast_error(self, code: int, text: str, req_id: int = -1) -> None:
        for session in self.ready_sessions():
            session.send_error(req_id, code, text)

    # ---- shared state used by sessions ------------------------------------------------------

    def ready_sessions(self) -> List[ClientSession]:
        with self.lock:
            return [s for s in self._sessions if s.client_id is not None]

    def claim_client_id(self, session: ClientSession, client_id: int) -> bool:
        """Give `session` this client id unless it is configured busy or another client holds it."""
        with self.lock:
            if client_id in self.busy_client_ids or any(s.client_id == client_id for s in self._sessions):
                return False
            session.client_id = client_id
            return True

    def session_closed(self, session: ClientSession, lines_held: int) -> None:
        with self.lock:
            if session in self._sessions:
                self._sessions.remove(session)
            self.lines_in_use -= lines_held

    def acquire_line(self) -> bool:
        with self.lock:
            if self.lines_in_use >= self.max_lines:
                self._counters["line_limit_errors"] += 1
                return False
            self.lines_in_use += 1
            self._counters["max_lines_in_use"] = max(self._counters["max_lines_in_use"], self.lines_in_use)
            return True

    def release_line(self) -> None:
        with self.lock:
            self.lines_in_use -= 1

    def count(self, key: str) -> None:
        with self.lock:
            self._counters[key] += 1

    def count_request(self, name: str) -> None:
        with self.lock:
            self._requests[name] += 1

    def count_error(self, code: int) -> None:
        with self.lock:
            self._errors[str(code)] += 1

    def reject_after_accept(self, reason: str, after_s: float = 0.2) -> None:
        """Test hook: the next order placed is accepted (PreSubmitted) and rejected after_s later, as
        IB's checks or an exchange can after acceptance: Inactive, then error 201 with the reason."""
        with self.lock:
            self.late_rejections.append((reason, after_s))

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        if self._scheduler is not None:
            self._scheduler.call_later(delay_s, fn)

    def tick_delay(self) -> float:
        return self._uniform(self.tick_delay_s)

    def snapshot_duration(self) -> float:
        return self._uniform(self.snapshot_s)

    def _uniform(self, bounds: Tuple[float, float]) -> float:
        if bounds[0] == bounds[1]:
            return bounds[0]
        with self.lock:
            return self.rng.uniform(*bounds)

    # ---- stats ------------------------------------------------------------------------------

    def stats(self) -> Dict:
        with self.lock:
            stats = {key: self._counters[key] for key in STAT_KEYS}
            stats["requests_by_type"] = dict(self._requests)
            stats["errors_sent"] = dict(self._errors)  # error/notice code -> times sent
            stats["lines_in_use"] = self.lines_in_use
            stats["clients_connected"] = sum(1 for s in self._sessions if s.client_id is not None)
        return stats

    def write_stats(self) -> None:
        if not self.stats_file:
            return
        tmp = f"{self.stats_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(self.stats(), out, indent=1, sort_keys=True)
        os.replace(tmp, self.stats_file)

    def _write_stats_forever(self) -> None:
        while not self._stopping.wait(STATS_INTERVAL_S):
            self.write_stats()


# ---- CLI ------------------------------------------------------------------------------------


def _int_list(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _delay_range(text: str) -> Tuple[int, int]:
    low, _, high = text.partition(",")
    return int(low), int(high or low)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.fake_tws", description="Fake TWS for tests.")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--accounts", default="DU1234567", help="comma list; U... = live")
    p.add_argument("--max-rate", type=int, default=50, help="messages per second per connection")
    p.add_argument("--pacing", choices=("reject", "queue"), default="queue")
    p.add_argument("--max-lines", type=int, default=100)
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--no-live-data", action="store_true")
    p.add_argument("--busy-client-ids", type=_int_list, default=[])
    p.add_argument("--tick-delay-ms", type=_delay_range, default=(5, 30), metavar="LO,HI")
    p.add_argument(
        "--snapshot-ms",
        type=_delay_range,
        default=(0, 0),
        metavar="LO,HI",
        help="from a snapshot request to its tickSnapshotEnd (TWS: 11 s), holding a line",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stats-file")
    p.add_argument(
        "--market-closed",
        action="store_true",
        help="live/delayed types get bid/ask -1 and no greeks; frozen/delayed-frozen the close's values",
    )
    p.add_argument(
        "--stream-notice",
        type=_int_list,
        default=[],
        metavar="CODE[,CODE]",
        help="send these notices (10090, 10091) on every option stream, which goes on without greeks",
    )
    p.add_argument(
        "--max-server-version",
        type=int,
        default=MAX_SERVER_VERSION,
        help=f"highest version answered, {MIN_SERVER_VERSION}..{MAX_SERVER_VERSION} (default: the "
        "newest, as current TWS)",
    )
    p.add_argument(
        "--place-delay-ms",
        type=int,
        default=0,
        metavar="MS",
        help="act on each placeOrder only MS later, as TWS does behind a precaution dialog "
        "(what-if orders are answered at once)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tws = FakeTWS(
        port=args.port,
        accounts=[a.strip() for a in args.accounts.split(",") if a.strip()],
        max_rate=args.max_rate,
        pacing=args.pacing,
        max_lines=args.max_lines,
        read_only=args.read_only,
        no_live_data=args.no_live_data,
        busy_client_ids=args.busy_client_ids,
        tick_delay_ms=args.tick_delay_ms,
        snapshot_ms=args.snapshot_ms,
        seed=args.seed,
        max_server_version=args.max_server_version,
        stats_file=args.stats_file,
        host=args.host,
        place_delay_ms=args.place_delay_ms,
        market_closed=args.market_closed,
        stream_notices=args.stream_notice,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = tws.start()
    print(f"fake_tws listening on {args.host}:{port}", flush=True)
    while not stop.wait(0.2):
        pass
    tws.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
