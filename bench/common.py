"""What every benchmark shares: the fake TWS as its own process, the option contracts measured, the
fake's stats, memory readings, and small statistics.

The fake runs as a separate process so its CPU (it streams ticks for up to 100 lines) never counts
against the process being measured; its figures come from the stats file it rewrites every 0.5 s.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import psutil

from tests.agent_process import ServerProcess
from tests.fake_market import Market

TWS_MAX_RATE = 50  # the fake's pacing limit: what the pacing floor is measured against
# IB: a snapshot's tickSnapshotEnd "is sent 11 seconds later" (TWS API docs, md_request); the fake
# holds the snapshot's line until then, as TWS counts it against the 100 lines.
TWS_SNAPSHOT_MS = 11000
FAKE_TWS_ARGS = ("--pacing", "reject", "--max-rate", str(TWS_MAX_RATE), "--max-lines", "100")
SEED = 1
MB = 1024 * 1024
# Contracts past the fake's listed options (about 2,900 on SMART) are the same options routed to
# another exchange the fake lists them on: distinct contracts to TWS and to the agent.
EXCHANGES = ("SMART", "CBOE", "ISE", "AMEX")
# The single-class stock chains: the fake's SPX (index, SPX beside SPXW) and XYZ (an adjusted
# class beside the standard one) list contracts that ticker/expiration/strike/right alone do not
# name, so the measured workload stays on these.
TICKERS = ("AAPL", "MSFT", "SPY", "MRGT")
COUNTERS = ("messages_in", "pacing_violations", "line_limit_errors", "connections")


@dataclass(frozen=True)
class BenchContract:
    ticker: str
    expiration: str
    strike: float
    right: str
    exchange: str
    con_id: int  # the fake's conId (ib_async needs one; the agent does not send it)
    has_bid: bool  # the fake quotes a bid for it (about 8 % of options have none)

    def params(self) -> dict:
        """The contract as the agent's scanner and the relay's fetch-prices take it."""
        return {
            "ticker": self.ticker,
            "expiration": self.expiration,
            "strike": self.strike,
            "right": self.right,
            "exchange": self.exchange,
        }


def option_contracts(count: int, seed: int = SEED) -> List[BenchContract]:
    """The first `count` options of the fake's market, in chain order (ticker, expiration, strike,
    right): every SMART contract first, then the exchange-routed ones."""
    market = Market(seed)
    options = [o for symbol in TICKERS for o in market.options(symbol)]
    found: List[BenchContract] = []
    for exchange in EXCHANGES:
        for option in options:
            if len(found) == count:
                return found
            if exchange == "SMART" or exchange in option.valid_exchanges.split(","):
                found.append(
                    BenchContract(
                        option.symbol,
                        option.expiry,
                        option.strike,
                        option.right,
                        exchange,
                        option.con_id,
                        market.quote(option).bid > 0,
                    )
                )
    if len(found) < count:
        raise ValueError(f"the fake lists only {len(found)} option contracts")
    return found


def completeness(contracts: Sequence[BenchContract], rows: Sequence[tuple]) -> float:
    """Share of contracts whose ask and model delta arrived, and their bid where the fake quotes one.
    rows: (bid, ask, delta) per contract, None for what did not arrive."""
    if not contracts:
        return 1.0
    done = sum(
        1
        for c, (bid, ask, delta) in zip(contracts, rows)
        if ask is not None and delta is not None and (bid is not None or not c.has_bid)
    )
    return done / len(contracts)


# ---- the fake TWS --------------------------------------------------------------------------


def fake_tws_args(snapshot_ms: int = TWS_SNAPSHOT_MS, seed: int = SEED) -> List[str]:
    return [*FAKE_TWS_ARGS, "--snapshot-ms", str(snapshot_ms), "--seed", str(seed)]


class FakeTwsProcess:
    """`python -m tests.fake_tws` with fake_tws_args() and a stats file."""

    def __init__(self, snapshot_ms: int = TWS_SNAPSHOT_MS, seed: int = SEED):
        self._dir = tempfile.mkdtemp(prefix="bench-tws-")
        self.stats_file = Path(self._dir) / "stats.json"
        self.server = ServerProcess(
            "tests.fake_tws", [*fake_tws_args(snapshot_ms, seed), "--stats-file", str(self.stats_file)]
        )
        self.port: Optional[int] = None

    def __enter__(self) -> "FakeTwsProcess":
        self.port = self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def fresh_stats(stats_file: Path, timeout: float = 5.0) -> dict:
    """The fake's stats as rewritten after this call, so everything sent before it is counted."""
    since = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(stats_file).st_mtime > since:
                with open(stats_file, encoding="utf-8") as stats:
                    return json.load(stats)
        except (OSError, ValueError):  # not written yet, or caught between write and rename
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the fake TWS did not rewrite {stats_file} within {timeout:g} s")


def stats_delta(before: dict, after: dict) -> dict:
    """What happened at the fake between two readings."""
    delta = {key: after[key] - before[key] for key in COUNTERS}
    requests = after["requests_by_type"]
    delta["requests_by_type"] = {
        name: requests[name] - before["requests_by_type"].get(name, 0)
        for name in requests
        if requests[name] != before["requests_by_type"].get(name, 0)
    }
    delta["max_lines_in_use"] = after["max_lines_in_use"]  # since the fake started
    return delta


# ---- memory --------------------------------------------------------------------------------


def rss_mb(pid: Optional[int] = None) -> float:
    return psutil.Process(pid).memory_info().rss / MB


class PeakRss:
    """Peak resident memory of this process over a `with` block: the kernel's high-water mark
    (reset on entry) on Linux, else sampled every 10 ms."""

    def __init__(self):
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._sampler: Optional[threading.Thread] = None

    def __enter__(self) -> "PeakRss":
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        self.peak_mb = max(self.peak_mb, high_water_mb() or 0.0, rss_mb())


def high_water_mb(pid: str = "self") -> Optional[float]:
    """VmHWM from /proc (Linux): the process's peak resident memory so far."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---- statistics and the machine ------------------------------------------------------------


def median(values: Sequence[float]) -> Optional[float]:
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def machine() -> Dict[str, object]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average": [round(x, 2) for x in load] if load else None,
    }
