"""One cold bulk measurement in a process of its own, so its memory and CPU are its own:

    python -m bench.worker METHOD --port P --stats-file F --count N [--rate R] [--seed S] [--pool P]

METHOD is `agent` (the agent's IB half in this process: a real IBConnection and Scanner with the
default config, IB_MAX_MSG_RATE=R, calling get_option_data_batch), `readme` (throttled at R),
`ib_async`, `ib_async_smooth` or `ib_async_chunked` (see bench.peers). Connecting happens before the clock starts;
the fake's stats are read just before the fetch and once everything sent during it has reached
the fake. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional, Sequence

from agent.config import Config
from bench.common import SEED, BenchContract, PeakRss, completeness, fresh_stats, option_contracts, rss_mb, stats_delta
from bench.listed import POOLS, pool_contracts
from bench.peers import LINE_CHUNK, PEER_RATE, README_WAIT_S, IbAsyncTickers, ReadmeChunked
from tests.fake_tws_session import PACING_STRIKES  # the fake hangs up on this many violations

METHODS = ("agent", "readme", "ib_async", "ib_async_smooth", "ib_async_chunked")
CONNECT_TIMEOUT_S = 20.0
NOTICE_CODES = (2104, 2106, 2158)
BENCH_KEY = "bench-key-0123456789"


class AgentBatch:
    """The agent's get_option_data_batch on its real connection, default config except the rate."""

    def __init__(self, rate: float):
        self.rate = rate
        self.conn = self.scanner = None
        self.incomplete_flags = 0

    def open(self, port: int) -> None:
        from agent.ib.connection import IBConnection
        from ib_scanner import Scanner

        config = Config(key=BENCH_KEY, ib_port=port, ib_max_msg_rate=self.rate)
        self.conn = IBConnection(config)
        self.conn.start()
        if not self.conn.wait_ready(CONNECT_TIMEOUT_S):
            raise TimeoutError(
                f"the agent's connection was not ready within {CONNECT_TIMEOUT_S:g} s: {self.conn.status()}"
            )
        self.scanner = Scanner(self.conn, config)

    def fetch(self, contracts: Sequence[BenchContract]) -> List[tuple]:
        options = self.scanner.get_option_data_batch([c.params() for c in contracts])
        self.incomplete_flags = sum(1 for o in options if not o["complete"])
        return [(o["bid"], o["ask"], o["delta"]) for o in options]

    def close(self) -> None:
        if self.scanner is not None:
            self.scanner.close()
        if self.conn is not None:
            self.conn.stop()

    def extra(self) -> dict:
        return {"agent_incomplete": self.incomplete_flags, "agent_stats": self.scanner.stats()}


class PeerBatch:
    """bench.peers behind the same open / fetch / close."""

    def __init__(self, peer):
        self.peer = peer

    def open(self, port: int) -> None:
        self.peer.open(port, timeout=CONNECT_TIMEOUT_S)

    def fetch(self, contracts: Sequence[BenchContract]) -> List[tuple]:
        return self.peer.fetch(contracts)

    def close(self) -> None:
        self.peer.close()

    def extra(self) -> dict:
        return {
            "tws_errors": {str(code): n for code, n in sorted(self.peer.errors.items()) if code not in NOTICE_CODES}
        }


def batch_for(method: str, rate: float, readme_wait_s: float):
    if method == "agent":
        return AgentBatch(rate)
    if method == "readme":
        return PeerBatch(ReadmeChunked(rate=rate, wait_s=readme_wait_s))
    chunked = method == "ib_async_chunked"
    return PeerBatch(IbAsyncTickers(smooth=method != "ib_async", chunk=LINE_CHUNK if chunked else None))


def measure(
    method: str,
    port: int,
    stats_file: Path,
    count: int,
    rate: float,
    seed: int = SEED,
    readme_wait_s: float = README_WAIT_S,
    pool: str = "mixed",
) -> dict:
    """The figures of one fetch; a fetch that fails (e.g. the fake dropped the client for pacing)
    still reports what the fake saw, with `error`. pool: `mixed` (bench.common.option_contracts) or
    one of bench.listed's SPY pools (the listed contracts of the nearest expirations, or their grid)."""
    contracts = option_contracts(count, seed) if pool == "mixed" else pool_contracts(pool, count, seed)
    batch = batch_for(method, rate, readme_wait_s)
    failure, rows = None, []
    try:
        batch.open(port)
        before = fresh_stats(stats_file)
        rss_before = rss_mb()
        with PeakRss() as peak:
            started = time.monotonic()
            try:
                rows = batch.fetch(contracts)
            except Exception as exc:
                failure = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
            wall = time.monotonic() - started
        after = fresh_stats(stats_file)
        extra = batch.extra()
    finally:
        batch.close()
    delta = stats_delta(before, after)
    result = dict(
        {
            "method": method,
            "rate": rate,
            "count": count,
            "wall_s": round(wall, 3),
            "messages": delta["messages_in"],
            "requests_by_type": delta["requests_by_type"],
            "pacing_violations": delta["pacing_violations"],
            "line_limit_errors": delta["line_limit_errors"],
            "dropped": (
                delta["connections"] > 0
                or after["clients_connected"] == 0
                or delta["pacing_violations"] >= PACING_STRIKES
            ),
            "max_lines_in_use": delta["max_lines_in_use"],
            "completeness": round(completeness(contracts, rows), 4) if rows else 0.0,
            "quoted": sum(1 for bid, ask, delta in rows if ask is not None and delta is not None),
            "pool": pool,
            "contracts": len(contracts),
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak.peak_mb, 1),
        },
        **extra,
    )
    if failure:
        result["error"] = failure
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=PEER_RATE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--readme-wait-s", type=float, default=README_WAIT_S)
    parser.add_argument(
        "--pool",
        choices=("mixed",) + POOLS,
        default="mixed",
        help="the contracts: the mixed stock chains, or SPY's listed contracts / their grid",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        result = measure(
            args.method, args.port, args.stats_file, args.count, args.rate, args.seed, args.readme_wait_s, args.pool
        )
    except Exception as exc:
        traceback.print_exc()
        print(
            json.dumps(
                {
                    "method": args.method,
                    "rate": args.rate,
                    "count": args.count,
                    "error": f"{exc.__class__.__name__}: {exc}",
                }
            ),
            flush=True,
        )
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
