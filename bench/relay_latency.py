"""Latency through the relay, measured on an `AgentUnderTest` (bench.footprint) with the fake relay's
Python API from this process (no HTTP in the path):

- relay overhead: the `status` action (answered by the agent without TWS) one at a time, then from
  8 concurrent callers;
- warm refresh: `fetch-prices` for contracts fetched a moment before, and the reqMktData messages
  the fake TWS received meanwhile (a warm refresh needs none).
"""

from __future__ import annotations

import threading
import time
from typing import List

from bench.common import fresh_stats, median, option_contracts, percentile, stats_delta
from bench.footprint import AgentUnderTest

CONCURRENT_CALLERS = 8
WARM_PAUSE_S = 0.1  # "a moment before": between one refresh and the next


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def status_round_trips(session: AgentUnderTest, count: int) -> List[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        session.request("status", {}, timeout_s=10)
        times.append(time.perf_counter() - started)
    return times


def relay_overhead(session: AgentUnderTest, count: int) -> dict:
    status_round_trips(session, min(50, count))  # warm-up: connection buffers, code paths
    times = status_round_trips(session, count)
    concurrent: List[float] = []
    lock = threading.Lock()
    per_caller = max(1, count // CONCURRENT_CALLERS)

    def caller() -> None:
        mine = status_round_trips(session, per_caller)
        with lock:
            concurrent.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(CONCURRENT_CALLERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started
    return {
        "requests": count,
        "median_ms": _ms(median(times)),
        "p99_ms": _ms(percentile(times, 99)),
        "max_ms": _ms(max(times)),
        "callers": CONCURRENT_CALLERS,
        "concurrent_requests": len(concurrent),
        "concurrent_req_per_s": round(len(concurrent) / elapsed, 1),
        "concurrent_median_ms": _ms(median(concurrent)),
    }


def warm_refresh(session: AgentUnderTest, contracts: int, repeats: int) -> dict:
    params = {"contracts": [c.params() for c in option_contracts(contracts)]}
    started = time.perf_counter()
    cold = session.request("fetch-prices", params)
    cold_s = time.perf_counter() - started
    before = fresh_stats(session.tws.stats_file)
    times, incomplete = [], 0
    for _ in range(repeats):
        time.sleep(WARM_PAUSE_S)
        started = time.perf_counter()
        data = session.request("fetch-prices", params)
        times.append(time.perf_counter() - started)
        incomplete += sum(1 for o in data["options"] if not o["complete"])
    delta = stats_delta(before, fresh_stats(session.tws.stats_file))
    return {
        "contracts": contracts,
        "underlyings": len(cold["underlyings"]),
        "repeats": repeats,
        "cold_ms": _ms(cold_s),
        "median_ms": _ms(median(times)),
        "p90_ms": _ms(percentile(times, 90)),
        "max_ms": _ms(max(times)),
        "incomplete": incomplete,
        "new_reqMktData": delta["requests_by_type"].get("reqMktData", 0),
        "new_cancelMktData": delta["requests_by_type"].get("cancelMktData", 0),
    }
