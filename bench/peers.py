"""The two ways of getting bulk option quotes the agent is measured against, on the same contracts:

- `ReadmeChunked`: the original README's method ("chunking, e.g. 50 contracts per chunk, 2.5 s
  wait") on the official ibapi client: stream 50 contracts, sleep 2.5 s, read what arrived,
  cancel the 50, next chunk. It asks for the same generic ticks as the agent and goes through a
  45/s limiter (ibapi has none; without it the chunk would break TWS's 50/s pacing).
- `IbAsyncTickers`: ib_async's `IB.reqTickers` (a snapshot per contract). Its own throttle sends
  up to 45 requests at once, then waits for the 1 s window to pass; `smooth=True` sets it to one
  request every 1/45 s (`client.MaxRequests = 1`, `RequestsInterval = 1/45`), the same average
  rate without bursts. `chunk=90` (the "chunked" peer) also calls reqTickers for 90 contracts at a time,
  as a careful user would so as to stay within TWS's 100 market-data lines while snapshots hold
  them (up to 11 s each). It needs conIds: the contracts come with the fake's, as if qualified
  earlier (that lookup, one reqContractDetails per contract, is not counted).

Each has open(port) / fetch(contracts) -> [(bid, ask, delta)] / close(); only fetch is timed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.wrapper import EWrapper

from agent.ib.pacing import MessageLimiter
from bench.common import BenchContract

README_CHUNK = 50
README_WAIT_S = 2.5
README_GENERIC_TICKS = "100,101,106"  # what the agent asks for: option volume, open interest, IV
PEER_RATE = 45.0  # ib_async's own throttle; the agent's default too
LINE_CHUNK = 90  # the agent's IB_MAX_MKT_LINES default
PRICE_FIELDS = {1: "bid", 2: "ask", 66: "bid", 67: "ask"}
MODEL_COMPUTATIONS = (13, 83)
FIRST_REQ_ID = 1000
SNAPSHOT_SLACK_S = 20.0


def _positive(value) -> Optional[float]:
    return value if value is not None and math.isfinite(value) and value > 0 else None


class ReadmeChunked(EWrapper, EClient):
    """Fixed chunks and a fixed wait, as the original agent did it."""

    def __init__(self, rate: float = PEER_RATE, chunk: int = README_CHUNK, wait_s: float = README_WAIT_S):
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.limiter = MessageLimiter(rate)
        self.chunk, self.wait_s = chunk, wait_s
        self.errors: Counter = Counter()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._fields: Dict[int, Dict[str, float]] = {}
        self._thread: Optional[threading.Thread] = None

    def open(self, port: int, client_id: int = 21, timeout: float = 10.0) -> None:
        logging.getLogger("ibapi").setLevel(logging.WARNING)
        self.connect("127.0.0.1", port, client_id)
        self._thread = threading.Thread(target=self.run, name="readme-peer-reader", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no nextValidId from the fake TWS within {timeout:g} s")

    def close(self) -> None:
        self.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def fetch(self, contracts: Sequence[BenchContract]) -> List[tuple]:
        rows: List[tuple] = []
        for start in range(0, len(contracts), self.chunk):
            req_ids = range(FIRST_REQ_ID + start, FIRST_REQ_ID + start + len(contracts[start : start + self.chunk]))
            for req_id, contract in zip(req_ids, contracts[start : start + self.chunk]):
                self._paced("reqMktData", req_id, _ibapi_contract(contract), README_GENERIC_TICKS, False, False, [])
            time.sleep(self.wait_s)
            with self._lock:
                rows += [tuple(self._fields.get(i, {}).get(f) for f in ("bid", "ask", "delta")) for i in req_ids]
            for req_id in req_ids:
                self._paced("cancelMktData", req_id)
        return rows

    def _paced(self, method: str, *args) -> None:
        self.limiter.acquire()
        getattr(self, method)(*args)

    def _store(self, req_id: int, field: str, value: Optional[float]) -> None:
        if value is not None:
            with self._lock:
                self._fields.setdefault(req_id, {})[field] = value

    # -- ibapi callbacks (reader thread) --
    def nextValidId(self, orderId: int):
        self._ready.set()

    def tickPrice(self, reqId, tickType, price, attrib):
        if tickType in PRICE_FIELDS:
            self._store(reqId, PRICE_FIELDS[tickType], _positive(price))

    def tickOptionComputation(
        self, reqId, tickType, tickAttrib, impliedVol, delta, optPrice, pvDividend, gamma, vega, theta, undPrice
    ):
        if tickType in MODEL_COMPUTATIONS and delta is not None and -1 <= delta <= 1:
            self._store(reqId, "delta", delta)

    def error(self, reqId, errorTime, errorCode, errorString, advancedOrderRejectJson=""):
        self.errors[errorCode] += 1


def _ibapi_contract(c: BenchContract) -> Contract:
    contract = Contract()
    contract.symbol, contract.secType, contract.currency, contract.exchange = c.ticker, "OPT", "USD", c.exchange
    contract.lastTradeDateOrContractMonth, contract.strike, contract.right = c.expiration, c.strike, c.right
    contract.multiplier = "100"
    return contract


class IbAsyncTickers:
    """ib_async's one-call bulk snapshot."""

    def __init__(self, smooth: bool = False, chunk: Optional[int] = None):
        from ib_async import IB  # Python 3.10+ only: imported when this peer runs

        logging.getLogger("ib_async").setLevel(logging.CRITICAL)  # it logs every notice it gets
        self.ib = IB()
        if smooth:
            self.ib.client.MaxRequests, self.ib.client.RequestsInterval = 1, 1 / PEER_RATE
        self.chunk = chunk
        self.errors: Counter = Counter()
        self.ib.errorEvent += lambda req_id, code, text, contract: self.errors.update([code])

    def open(self, port: int, client_id: int = 22, timeout: float = 10.0) -> None:
        self.ib.connect("127.0.0.1", port, clientId=client_id, timeout=timeout)

    def close(self) -> None:
        self.ib.disconnect()

    def fetch(self, contracts: Sequence[BenchContract]) -> List[tuple]:
        """A request TWS dropped for pacing (error 100 without a disconnect) never ends its snapshot,
        and reqTickers would wait for it forever: hence a timeout of twice the throttled time."""
        from ib_async import Option

        chunk = self.chunk or len(contracts)
        self.ib.RequestTimeout = SNAPSHOT_SLACK_S + 2 * chunk / PEER_RATE
        tickers = []
        for start in range(0, len(contracts), chunk):
            tickers += self.ib.reqTickers(
                *(
                    Option(c.ticker, c.expiration, c.strike, c.right, c.exchange, "100", "USD", conId=c.con_id)
                    for c in contracts[start : start + chunk]
                )
            )
        return [(_positive(t.bid), _positive(t.ask), t.modelGreeks.delta if t.modelGreeks else None) for t in tickers]
