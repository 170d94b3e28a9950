"""The agent as a user runs it (`python ib_data_agent.py`, its own process) between the fake TWS
(its own process) and tests.fake_relay (in this process, driven through its Python API): time to
ready, resident memory and CPU while idle, memory after a big batch.

"Ready" is the moment the relay holds a hello or status frame whose `ib.connected` is true, counted
from just before the process is spawned (interpreter start and imports included).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

import psutil

from bench.common import FakeTwsProcess, high_water_mb, option_contracts, rss_mb
from tests.agent_process import DEFAULT_KEY, AgentProcess
from tests.fake_relay import FakeRelay

READY_TIMEOUT_S = 30.0
SETTLE_S = 1.0  # after ready, before idle figures: the start-up burst is over
FIRST_CLIENT_ID = 17


class AgentUnderTest:
    """One fake TWS and one fake relay; agents started (and timed) against them one after another."""

    def __init__(self, tws: FakeTwsProcess, relay: FakeRelay, env: Optional[dict] = None):
        self.tws, self.relay = tws, relay
        self.env = dict(env or {})
        self.agent: Optional[AgentProcess] = None
        self._starts = 0

    def start(self) -> float:
        """Start an agent (stopping the previous one); the seconds until it was ready."""
        self.stop()
        first_frame = len(self.relay.frames)
        env = dict(self.env, IB_CLIENT_ID=str(FIRST_CLIENT_ID + self._starts))
        self._starts += 1
        self.agent = AgentProcess(DEFAULT_KEY, self.relay.url, self.tws.port, env=env)
        started = time.monotonic()
        self.agent.start()
        try:
            self.relay.wait_until(
                lambda: _connected(self.relay.frames[first_frame:]),
                READY_TIMEOUT_S,
                "a hello or status with ib.connected true",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; agent output:\n{self.agent.output[-3000:]}") from None
        return time.monotonic() - started

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent.cleanup()
            self.agent = None

    @property
    def pid(self) -> int:
        return self.agent.pid

    def request(self, action: str, params: dict, timeout_s: float = 60.0) -> dict:
        response = self.relay.request(action, params, timeout_s=timeout_s)
        if not response.get("ok"):
            raise RuntimeError(f"{action} failed: {response.get('error')}")
        return response["data"]


def _connected(frames: List) -> bool:
    return any(
        isinstance(f, dict) and f.get("type") in ("hello", "status") and (f.get("ib") or {}).get("connected")
        for f in frames
    )


@contextmanager
def agent_under_test(env: Optional[dict] = None) -> Iterator[AgentUnderTest]:
    with FakeTwsProcess() as tws:
        relay = FakeRelay(key=DEFAULT_KEY)
        relay.start()
        session = AgentUnderTest(tws, relay, env)
        try:
            yield session
        finally:
            session.stop()
            relay.stop()


def ready_times(session: AgentUnderTest, starts: int) -> List[float]:
    """Time to ready of `starts` fresh agent processes; the last one keeps running."""
    return [round(session.start(), 3) for _ in range(starts)]


def idle_figures(session: AgentUnderTest, idle_s: float) -> dict:
    """Resident memory once settled, and CPU over idle_s seconds without requests (% of one core)."""
    time.sleep(SETTLE_S)
    process = psutil.Process(session.pid)
    rss = rss_mb(session.pid)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(idle_s)
    after, elapsed = process.cpu_times(), time.monotonic() - started
    busy = (after.user - before.user) + (after.system - before.system)
    return {"rss_idle_mb": round(rss, 1), "cpu_idle_pct": round(100.0 * busy / elapsed, 3), "idle_s": round(elapsed, 1)}


def batch_figures(session: AgentUnderTest, count: int) -> dict:
    """fetch-prices for `count` contracts through the relay; memory after it and the peak so far."""
    contracts = [c.params() for c in option_contracts(count)]
    started = time.monotonic()
    data = session.request("fetch-prices", {"contracts": contracts}, timeout_s=count / 10 + 120)
    elapsed = time.monotonic() - started
    peak = high_water_mb(str(session.pid))
    return {
        "batch_contracts": count,
        "batch_s": round(elapsed, 2),
        "batch_complete": sum(1 for o in data["options"] if o["complete"]),
        "rss_after_batch_mb": round(rss_mb(session.pid), 1),
        "peak_rss_mb": round(peak, 1) if peak is not None else None,
    }
