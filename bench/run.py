"""The whole benchmark suite in one command; prints tables, `--json PATH` writes every figure.

    python -m bench.run            # full: 200/1,000/2,000 cold, scaling to 5,000 (about 45 min)
    python -m bench.run --quick    # about a minute: 100 cold (agent, README), scaling 100/200, 5 s idle,
                                   # 100 listed SPY options (agent, README on their grid)

Everything runs against `python -m tests.fake_tws --pacing reject --max-rate 50 --max-lines 100
--snapshot-ms 11000`, a fresh fake process per measurement; the snapshot section varies
--snapshot-ms to show where snapshots would beat the agent's streams. Cold bulk measurements run each method
in its own process
(bench.worker), interleaved per repeat so machine noise falls on all of them alike; the agent
process figures (ready, idle, relay, warm refresh, memory after a batch) use bench.footprint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from agent.config import DEFAULT_WARM_LINES, Config
from bench import report
from bench.common import TWS_SNAPSHOT_MS, FakeTwsProcess, fake_tws_args, machine, median
from bench.footprint import agent_under_test, batch_figures, idle_figures, ready_times
from bench.listed import agent_fetch_chain, chain_summary, listed_plan
from bench.listed import summarize as listed_summary
from bench.peers import LINE_CHUNK, PEER_RATE, README_CHUNK, README_WAIT_S
from bench.relay_latency import relay_overhead, warm_refresh

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RATE = next(f.default for f in dataclasses.fields(Config) if f.name == "ib_max_msg_rate")
SECTIONS = ("cold", "scaling", "process", "snapshots", "listed")


@dataclass(frozen=True)
class Settings:
    cold_sizes: Tuple[int, ...]
    scaling_sizes: Tuple[int, ...]  # sizes not in cold_sizes run once, agent only
    peers: Tuple[str, ...]
    agent_rates: Tuple[float, ...]  # the first is the one the targets are checked on
    repeats: int
    relay_requests: int
    warm_repeats: int
    ready_starts: int
    idle_s: float
    footprint_batch: int
    warm_contracts: int = 40
    warm_lines_variant: Optional[int] = 40  # a second warm run with this WARM_LINES (None: skip)
    readme_wait_s: float = README_WAIT_S
    sections: Tuple[str, ...] = SECTIONS
    snapshot_ms: int = TWS_SNAPSHOT_MS  # the fake's snapshot duration everywhere but the sweep
    sweep_snapshot_ms: Tuple[int, ...] = ()  # the snapshot section: one run per duration
    sweep_count: int = 1000
    sweep_peers: Tuple[str, ...] = ("ib_async_smooth", "ib_async_chunked")
    listed_count: int = 1000  # the listed section: SPY options of the nearest expirations
    listed_peers: Tuple[str, ...] = ("readme", "ib_async_chunked")
    chain_max_days: Optional[int] = 30  # ... and fetch-chain SPY max_days N (None: skip)
    chain_strikes_around: Optional[int] = None


FULL = Settings(
    cold_sizes=(200, 1000, 2000),
    scaling_sizes=(200, 1000, 2000, 5000),
    peers=("readme", "ib_async", "ib_async_smooth"),
    agent_rates=(DEFAULT_RATE,),
    repeats=3,
    relay_requests=1000,
    warm_repeats=20,
    ready_starts=5,
    idle_s=60.0,
    footprint_batch=2000,
    sweep_snapshot_ms=(0, 2000, 5000, 11000),
)
QUICK = Settings(
    cold_sizes=(100,),
    scaling_sizes=(100, 200),
    peers=("readme",),
    agent_rates=(DEFAULT_RATE,),
    repeats=1,
    relay_requests=200,
    warm_repeats=10,
    ready_starts=2,
    idle_s=5.0,
    footprint_batch=100,
    sections=("cold", "scaling", "process", "listed"),
    listed_count=100,
    listed_peers=("readme",),
    chain_max_days=None,
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def worker_timeout_s(method: str, count: int, rate: float, readme_wait_s: float, snapshot_ms: int) -> float:
    """Generous: twice the pacing-bound time plus the README's waits or the snapshots' ends, plus start-up."""
    waits = {
        "readme": -(-count // README_CHUNK) * readme_wait_s,
        "ib_async_chunked": -(-count // LINE_CHUNK) * snapshot_ms / 1000,
        "ib_async": snapshot_ms / 1000,
        "ib_async_smooth": snapshot_ms / 1000,
    }
    return 2 * (2 * count / min(rate, PEER_RATE)) + waits.get(method, 0.0) + 90


def run_worker(
    method: str,
    rate: float,
    count: int,
    settings: Settings,
    snapshot_ms: Optional[int] = None,
    pool: str = "mixed",
    contracts: Optional[int] = None,
) -> dict:
    """One measurement: a fresh fake TWS process, the method in a process of its own. `contracts`:
    how many the pool holds for `count` (a SPY pool's size), for the timeout."""
    snapshot_ms = settings.snapshot_ms if snapshot_ms is None else snapshot_ms
    with FakeTwsProcess(snapshot_ms) as tws:
        command = [
            sys.executable,
            "-m",
            "bench.worker",
            method,
            "--port",
            str(tws.port),
            "--stats-file",
            str(tws.stats_file),
            "--count",
            str(count),
            "--rate",
            str(rate),
            "--readme-wait-s",
            str(settings.readme_wait_s),
            "--pool",
            pool,
        ]
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=worker_timeout_s(method, contracts or count, rate, settings.readme_wait_s, snapshot_ms),
            )
            lines = done.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {"error": f"no result (exit {done.returncode})"}
            if "error" in result:
                result["stderr_tail"] = done.stderr[-2000:]
        except subprocess.TimeoutExpired:
            result = {"error": "timed out"}
    result.setdefault("method", method)
    result.setdefault("rate", rate)
    result.setdefault("count", count)
    result["snapshot_ms"] = snapshot_ms
    return result


def outcome(result: dict) -> str:
    text = ""
    if "wall_s" in result:
        text = (
            f"{result['wall_s']:.2f} s, {result['messages']} msgs, {result['pacing_violations']} violations, "
            f"peak {result['peak_rss_mb']} MB"
        )
    return text + (f" FAILED {result['error']}" if "error" in result else "")


def _variants(settings: Settings) -> List[Tuple[str, float]]:
    return [("agent", rate) for rate in settings.agent_rates] + [(peer, PEER_RATE) for peer in settings.peers]


def cold_suite(settings: Settings) -> List[dict]:
    runs = []
    for repeat in range(settings.repeats):
        for count in settings.cold_sizes:
            for method, rate in _variants(settings):
                result = run_worker(method, rate, count, settings)
                result["repeat"] = repeat
                runs.append(result)
                log(f"cold {count:>5} {report.label(method, rate):<22} repeat {repeat + 1}: {outcome(result)}")
    return runs


def scaling_suite(settings: Settings, cold_sizes: Sequence[int]) -> List[dict]:
    runs = []
    for count in settings.scaling_sizes:
        if count in cold_sizes:
            continue  # the cold bulk runs of the agent are its figures
        result = run_worker("agent", settings.agent_rates[0], count, settings)
        result["repeat"] = 0
        runs.append(result)
        log(f"scaling {count:>5}: {outcome(result)}")
    return runs


def snapshot_suite(settings: Settings) -> List[dict]:
    """The snapshot peers at several snapshot durations: where snapshots would beat streaming."""
    runs = []
    for snapshot_ms in settings.sweep_snapshot_ms:
        for method in settings.sweep_peers:
            result = run_worker(method, PEER_RATE, settings.sweep_count, settings, snapshot_ms)
            runs.append(result)
            log(f"snapshots {snapshot_ms:>5} ms {report.label(method, PEER_RATE):<22}: {outcome(result)}")
    return runs


def listed_suite(settings: Settings) -> dict:
    """Listed SPY quotes cold through the relay, the peers on the same work, fetch-chain SPY max_days."""
    plan = listed_plan(settings.listed_count)
    budget_s = 2 * 2 * len(plan.listed) / DEFAULT_RATE + 90
    agent = agent_fetch_chain(plan.params, budget_s)
    log(
        f"listed {agent['options']} SPY options: {agent['wall_s']} s, {agent['messages']} msgs, "
        f"{agent['pacing_violations']} violations, errors {agent['errors_sent']}"
        + (f" FAILED {agent['error']}" if "error" in agent else "")
    )
    peers = []
    for method in settings.listed_peers:
        pool = "spy-grid" if method == "readme" else "spy-listed"  # the README built chains from the grid
        size = len(plan.grid if pool == "spy-grid" else plan.listed)
        result = run_worker(method, PEER_RATE, settings.listed_count, settings, pool=pool, contracts=size)
        peers.append(result)
        log(f"listed {report.label(method, PEER_RATE)} on {size} ({pool}): {outcome(result)}")
    results = {"listed": listed_summary(agent, peers)}
    if settings.chain_max_days is not None:
        params = {"ticker": "SPY", "max_days": settings.chain_max_days}
        if settings.chain_strikes_around:
            params["strikes_around"] = settings.chain_strikes_around
        chain = chain_summary(agent_fetch_chain(params, budget_s * 3))
        log(
            f"chain {params}: {chain['options']} options, {chain['reqMktData']} reqMktData, "
            f"{chain['errors_200']} error 200, {chain['wall_s']} s"
        )
        results["listed_chain"] = chain
    return results


def process_suite(settings: Settings) -> dict:
    warm = []
    with agent_under_test() as session:
        ready = ready_times(session, settings.ready_starts)
        log(f"ready: {ready}")
        footprint = idle_figures(session, settings.idle_s)
        log(f"idle: {footprint}")
        relay = relay_overhead(session, settings.relay_requests)
        log(f"relay: {relay}")
        warm.append(
            dict(
                config=f"default WARM_LINES={DEFAULT_WARM_LINES}",
                **warm_refresh(session, settings.warm_contracts, settings.warm_repeats),
            )
        )
        log(f"warm: {warm[-1]}")
        footprint.update(batch_figures(session, settings.footprint_batch))
        log(f"batch: {footprint}")
    footprint.update(ready_s=ready, ready_median_s=median(ready))
    if settings.warm_lines_variant:
        with agent_under_test({"WARM_LINES": str(settings.warm_lines_variant)}) as session:
            session.start()
            warm.append(
                dict(
                    config=f"WARM_LINES={settings.warm_lines_variant}",
                    **warm_refresh(session, settings.warm_contracts, settings.warm_repeats),
                )
            )
            log(f"warm: {warm[-1]}")
    return {"footprint": footprint, "relay_overhead": relay, "warm_refresh": warm}


def source_commit() -> Optional[str]:
    """The commit the figures were measured on, with "+changes" when the tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if changed else "")) or None


def run_suite(settings: Settings, mode: str) -> dict:
    started = time.monotonic()
    results: dict = {
        "mode": mode,
        "settings": dataclasses.asdict(settings),
        "machine": machine(),
        "commit": source_commit(),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "fake_tws": " ".join(["python -m tests.fake_tws", *fake_tws_args(settings.snapshot_ms)]),
    }
    cold_runs: List[dict] = []
    if "cold" in settings.sections:
        cold_runs = cold_suite(settings)
        summary = report.summarize_cold(cold_runs)
        results["cold_bulk"] = {
            "runs": cold_runs,
            "summary": summary,
            "side_by_side": report.side_by_side(cold_runs, settings.agent_rates[0]),
        }
    if "scaling" in settings.sections:
        cold_sizes = settings.cold_sizes if cold_runs else ()
        extra = scaling_suite(settings, cold_sizes)
        results["scaling_runs"] = extra
        results["scaling"] = report.scaling_rows(
            results.get("cold_bulk", {}).get("summary", []), extra, settings.agent_rates[0]
        )
    if "process" in settings.sections:
        results.update(process_suite(settings))
    if "snapshots" in settings.sections and settings.sweep_snapshot_ms:
        results["snapshot_sweep"] = report.summarize_cold(snapshot_suite(settings))
    if "listed" in settings.sections:
        results.update(listed_suite(settings))
    results["targets"] = report.targets(results, settings.agent_rates[0])
    results["load_average_end"] = machine()["load_average"]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def _numbers(text: str, kind=int) -> Tuple:
    return tuple(kind(x) for x in text.split(",") if x.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the under-a-minute version")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--repeats", type=int, help="cold bulk repeats (full 3, quick 1)")
    parser.add_argument("--sizes", type=_numbers, help="cold bulk sizes, e.g. 200,1000")
    parser.add_argument("--scaling-sizes", type=_numbers, help="scaling sizes, e.g. 200,1000,2000,5000")
    parser.add_argument(
        "--agent-rates",
        type=lambda t: _numbers(t, float),
        help=f"IB_MAX_MSG_RATE values for the agent, first = checked (default {DEFAULT_RATE:g}[,48])",
    )
    parser.add_argument(
        "--peers",
        type=lambda t: tuple(p for p in t.split(",") if p),
        help="peers beside the agent: readme,ib_async,ib_async_smooth,ib_async_chunked (empty: none)",
    )
    parser.add_argument("--sections", type=lambda t: tuple(t.split(",")), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--snapshot-ms", type=int, help=f"the fake's snapshot duration (default {TWS_SNAPSHOT_MS})")
    parser.add_argument("--sweep-snapshot-ms", type=_numbers, help="snapshot section durations, e.g. 0,2000,11000")
    parser.add_argument("--listed-count", type=int, help="listed section: SPY options to quote (full 1000)")
    parser.add_argument(
        "--listed-peers",
        type=lambda t: tuple(p for p in t.split(",") if p),
        help="listed section peers (default readme,ib_async_chunked; empty: none)",
    )
    parser.add_argument("--chain-max-days", type=int, help="listed section: fetch-chain SPY max_days (full 30)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        "repeats": args.repeats,
        "cold_sizes": args.sizes,
        "scaling_sizes": args.scaling_sizes,
        "agent_rates": args.agent_rates,
        "sections": args.sections,
        "peers": args.peers,
        "snapshot_ms": args.snapshot_ms,
        "sweep_snapshot_ms": args.sweep_snapshot_ms,
        "listed_count": args.listed_count,
        "listed_peers": args.listed_peers,
        "chain_max_days": args.chain_max_days,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    results = run_suite(settings, "quick" if args.quick else "full")
    print(report.render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
