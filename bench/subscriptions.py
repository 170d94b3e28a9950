"""Subscriptions (v1.1 subscribe / update): `python -m bench.subscriptions [--seconds S] [--json PATH]`.

The agent runs as a user runs it (`python ib_data_agent.py`, its own process, so its CPU is
measured alone); the fake TWS and the fake relay run in this process, so one clock
(time.monotonic) stamps both ends:

- a tick: when the fake TWS has written one of its updates for a stream (`_emit`, after the
  socket send) for a subscribed option or underlying;
- a frame: when the fake relay has read an `update` frame.

Latency of a change = the frame that carries a contract minus the first tick of that contract
since the previous frame that carried it (so a change that waited out the throttle counts the
whole wait). It is an upper bound where a tick moved nothing visible (its change then waits for
the next real one); a tick written while the frame was already in flight counts as ~0 toward it.

Scenarios: 60 options (and their underlying) at interval_ms 1000 and 250 at the fake's normal
tick rate (each stream moves every 0.25-1 s); one underlying alone at 250 ms, whose ticks come at
least 250 ms apart, so the throttle hardly ever holds one back: that one shows the pipeline's own
latency; and, for the agent's CPU, the same 60 options and underlying streaming with no
subscription (kept warm after a fetch-prices): what decoding their ticks costs anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import psutil

from bench.common import median, option_contracts, percentile
from tests import fake_tws as fake_tws_module
from tests.agent_process import DEFAULT_KEY, AgentProcess
from tests.fake_relay import FakeRelay
from tests.fake_tws import FakeTWS
from tests.fake_tws_session import ClientSession

SCENARIOS = ((60, (), 1000), (60, (), 250), (0, ("MSFT",), 250))  # (options, tickers, interval_ms)
AGENT_ENV = {"WARM_LINES": "70"}  # room for 60 options and their underlying (the default is 60)
SETTLE_S = 1.0  # after the first picture, before measuring


class _Stamps:
    """Ticks written by the fake TWS, stamped: (monotonic time, contract key)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ticks: List[Tuple[float, tuple]] = []


STAMPS = _Stamps()


class StampingSession(ClientSession):
    """The fake's client session, noting when each stream update went out (nothing else changes)."""

    def _emit(self, sub, first: bool) -> None:
        live = self._is_live(sub)
        super()._emit(sub, first)
        if live and not first:
            inst = sub.instrument
            key = (
                ("OPT", inst.symbol, inst.expiry, inst.strike, inst.right) if inst.sec_type == "OPT" else (inst.symbol,)
            )
            with STAMPS.lock:
                STAMPS.ticks.append((time.monotonic(), key))


class StampingRelay(FakeRelay):
    """The fake relay, noting when each update frame arrived."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.arrivals: List[Tuple[float, dict]] = []

    def _record_pushed(self, kind: str, frame: dict) -> None:
        if kind == "update":
            self.arrivals.append((time.monotonic(), frame))
        super()._record_pushed(kind, frame)


@contextmanager
def stack() -> Iterator[Tuple[FakeTWS, StampingRelay, AgentProcess]]:
    original = fake_tws_module.ClientSession
    fake_tws_module.ClientSession = StampingSession  # the fake's accept loop builds its sessions from it
    tws = FakeTWS(port=0)
    relay = StampingRelay(key=DEFAULT_KEY)
    agent = None
    try:
        port = tws.start()
        relay.start()
        agent = AgentProcess(DEFAULT_KEY, relay.url, port, env=AGENT_ENV)
        agent.start()
        relay.wait_hello(30)
        deadline = time.monotonic() + 30
        while not (relay.request("status", timeout_s=10).get("data") or {}).get("connected"):
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not connect to the fake TWS")
            time.sleep(0.1)
        yield tws, relay, agent
    finally:
        if agent is not None:
            agent.stop()
            agent.cleanup()
        relay.stop()
        tws.stop()
        fake_tws_module.ClientSession = original


def frame_keys(frame: dict) -> List[tuple]:
    keys = [("OPT", o["ticker"], o["expiration"], o["strike"], o["right"]) for o in frame["options"]]
    return keys + [(ticker,) for ticker in frame["underlyings"]]


def latencies(ticks: List[Tuple[float, tuple]], frames: List[Tuple[float, dict]]) -> List[float]:
    """Per contract carried by a frame: the frame's arrival minus that contract's first tick since
    it was last carried (ticks of contracts no frame carried yet are waiting, not counted)."""
    events = sorted([(t, 0, key) for t, key in ticks] + [(t, 1, frame) for t, frame in frames], key=lambda e: e[:2])
    waiting: Dict[tuple, float] = {}
    found = []
    for at, kind, subject in events:
        if kind == 0:
            waiting.setdefault(subject, at)
            continue
        for key in frame_keys(subject):
            since = waiting.pop(key, None)
            if since is not None:
                found.append(at - since)
    return found


def measure(
    tws: FakeTWS, relay: StampingRelay, agent: AgentProcess, options: int, tickers, interval_ms: int, seconds: float
) -> dict:
    params = {"contracts": [c.params() for c in option_contracts(options)], "tickers": list(tickers)}
    params = dict({k: v for k, v in params.items() if v}, interval_ms=interval_ms)
    response = relay.request("subscribe", params, timeout_s=60)
    if not response.get("ok"):
        raise RuntimeError(f"subscribe failed: {response.get('error')}")
    sub_id = response["data"]["subscription"]
    time.sleep(SETTLE_S)
    process = psutil.Process(agent.pid)
    before_stats, before_cpu = tws.stats(), process.cpu_times()
    with STAMPS.lock:
        first_tick = len(STAMPS.ticks)
    first_frame = len(relay.arrivals)
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after_cpu, after_stats = process.cpu_times(), tws.stats()
    with STAMPS.lock:
        ticks = STAMPS.ticks[first_tick:]
    frames = [(t, f) for t, f in relay.arrivals[first_frame:] if f["subscription"] == sub_id]
    relay.request("unsubscribe", {"subscription": sub_id})
    found = latencies(ticks, frames)
    busy = (after_cpu.user - before_cpu.user) + (after_cpu.system - before_cpu.system)
    messages = after_stats["messages_in"] - before_stats["messages_in"]
    seqs = [f["seq"] for _, f in frames]
    return {
        "options": options,
        "underlyings": len(response["data"]["underlyings"]),
        "interval_ms": interval_ms,
        "seconds": round(elapsed, 1),
        "ticks_per_s": round(len(ticks) / elapsed, 1),
        "updates_per_s": round(len(frames) / elapsed, 2),
        "contracts_per_update": round(sum(len(frame_keys(f)) for _, f in frames) / max(1, len(frames)), 1),
        "latency_median_ms": _ms(median(found)),
        "latency_p90_ms": _ms(percentile(found, 90)),
        "latency_max_ms": _ms(max(found) if found else None),
        "min_gap_ms": _ms(min((b[0] - a[0] for a, b in zip(frames, frames[1:])), default=None)),
        "agent_cpu_pct": round(100.0 * busy / elapsed, 2),
        "tws_messages": messages,
        "tws_messages_per_update": round(messages / max(1, len(frames)), 3),
        "seq_gaps": sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1),
    }


def baseline_cpu(tws: FakeTWS, relay: StampingRelay, agent: AgentProcess, options: int, seconds: float) -> dict:
    """The agent's CPU while the same streams tick with no subscription (warm after a fetch-prices)."""
    response = relay.request("fetch-prices", {"contracts": [c.params() for c in option_contracts(options)]}, None, 60)
    if not response.get("ok"):
        raise RuntimeError(f"fetch-prices failed: {response.get('error')}")
    time.sleep(SETTLE_S)
    process = psutil.Process(agent.pid)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = process.cpu_times(), time.monotonic() - started
    busy = (after.user - before.user) + (after.system - before.system)
    return {
        "options": options,
        "warm_lines": tws.stats()["lines_in_use"],
        "agent_cpu_pct": round(100.0 * busy / elapsed, 2),
    }


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)


def run(seconds: float, scenarios=SCENARIOS) -> Tuple[List[dict], dict]:
    """(one row per scenario, the no-subscription CPU baseline for the first one's options)."""
    with stack() as (tws, relay, agent):
        rows = [measure(tws, relay, agent, *scenario, seconds) for scenario in scenarios]
        return rows, baseline_cpu(tws, relay, agent, scenarios[0][0], seconds)


COLUMNS = (
    ("options", "options"),
    ("underlyings", "underlyings"),
    ("interval_ms", "interval ms"),
    ("ticks_per_s", "ticks/s"),
    ("updates_per_s", "updates/s"),
    ("contracts_per_update", "contracts per update"),
    ("latency_median_ms", "latency median ms"),
    ("latency_p90_ms", "p90 ms"),
    ("agent_cpu_pct", "agent CPU %"),
    ("tws_messages_per_update", "TWS messages per update"),
)


def table(rows: List[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriptions", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per scenario (30)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows, baseline = run(args.seconds)
    print(table(rows))
    print(
        f"\nThe same {baseline['options']} options streaming with no subscription ({baseline['warm_lines']} warm "
        f"lines): agent CPU {baseline['agent_cpu_pct']} %"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"scenarios": rows, "no_subscription": baseline}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
