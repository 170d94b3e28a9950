"""Soak: the agent (a real `python ib_data_agent.py` process) against the fake TWS and the fake
cloud for N minutes of mixed traffic and faults, then one report.

    python tools/soak.py --minutes 5
    python tools/soak.py --reconnects --tws-restarts 8 --tws-down-s 30 --relay-flaps 10

Traffic: several callers in parallel (status, quote, expirations, fetch-prices, fetch-chain,
sell-scan, positions, account-summary, open-orders, place-order repeated under the same id),
plus bad frames. Faults on a schedule: relay drops, TWS drops and restarts (with a down time),
1100/1101/1102 and a client-id collision. The report: requests sent and answered, the agent's
requests_served, errors by code, relay and TWS reconnects, the fake TWS's pacing and line errors,
orders placed against distinct order ids, and the agent's RSS and thread count at the start
(after a warm-up) and at the end. Exit 0 when every request was answered, no order was placed
twice and neither RSS nor threads grew past the limits; 1 otherwise.

--reconnects measures the product's own reconnect timing instead (no traffic): how long after
TWS listens again the agent reports connected, and how long the agent takes to come back to a
relay that cuts it one second after every reconnect.

The drivers (CloudCaller, the contract pickers, Gauge, start_agent) are shared with
tests/test_reliability_*.py.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.agent_process import DEFAULT_KEY, PYTHON, AgentProcess, AgentStack, RelayClient  # noqa: E402
from tests.fake_market import Market, on_tick  # noqa: E402
from tests.fake_relay import AgentNotConnected, FakeRelay, RequestTimedOut  # noqa: E402

# ----- the agent process ---------------------------------------------------------------------

# The agent with a shorter relay reconnect backoff. Tests that cut the relay every second use it:
# with the product's backoff (full jitter, doubling up to 15 s, reset only after a connection
# that lasted 10 s) a cut every second leaves the agent offline most of the time, which says
# nothing about exactly-once delivery and makes the run several times longer. RELIABILITY.md has
# the product's reconnect figures.
_FAST_RELAY_RETRY = """
import functools
import sys
import ib_data_agent
from agent.relay import link as relay_link
low, high = float(sys.argv[1]), float(sys.argv[2])
timings = relay_link.LinkTimings(backoff_min_s=low, backoff_max_s=high)
ib_data_agent.RelayLink = functools.partial(relay_link.RelayLink, timings=timings)
sys.exit(ib_data_agent.main(sys.argv[3:]))
"""


FAST_RELAY_BACKOFF = (0.1, 1.0)  # (min, max) seconds, for start_agent(relay_backoff=...)


def start_agent(
    stack: AgentStack,
    data_dir: Path,
    relay_backoff: Optional[Tuple[float, float]] = None,
    env: Optional[Dict[str, str]] = None,
    key: Optional[str] = None,
) -> AgentProcess:
    """Start an agent process for the stack's fakes in data_dir (kept across restarts: the order
    id store lives there), with an empty config file; relay_backoff=(min, max) shortens the relay
    reconnect backoff. Returns once the relay has its hello."""
    config = data_dir / "empty-config.env"
    config.write_text("# everything comes from the environment\n")
    if relay_backoff is None:
        command = [PYTHON, "-u", str(ROOT / "ib_data_agent.py"), "--config", str(config)]
    else:
        command = [
            PYTHON,
            "-u",
            "-c",
            _FAST_RELAY_RETRY,
            str(relay_backoff[0]),
            str(relay_backoff[1]),
            "--config",
            str(config),
        ]
    connections = stack.relay.connections
    agent = AgentProcess(key or stack.key, stack.relay.url, stack.ib_port, env, command=command, data_dir=data_dir)
    agent.start()
    try:
        stack.relay.wait_until(
            lambda: stack.relay.connections > connections and stack.relay.hello, timeout=60, what="the agent's hello"
        )
    except TimeoutError:
        agent.stop()
        raise TimeoutError(f"no hello from the agent; its output:\n{agent.output[-4000:]}") from None
    return agent


class Gauge:
    """RSS and thread count of a process (the agent), for 'no growth' figures."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)

    def rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def threads(self) -> int:
        return self._process.num_threads()

    def sample(self) -> Dict[str, float]:
        return {"rss_mb": round(self.rss_mb(), 1), "threads": self.threads()}


class Dropper:
    """Cuts the agent's relay connection every `every_s` seconds (when it is connected)."""

    def __init__(self, relay, every_s: float):
        self.relay = relay
        self.every_s = every_s
        self.drops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropper", daemon=True)

    def __enter__(self) -> "Dropper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.relay.drop():
                self.drops += 1


def figures(test: str, **values) -> None:
    """One stderr line per reliability test with the numbers docs/RELIABILITY.md quotes."""
    print(f"\n[figures] {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()), file=sys.stderr, flush=True)


# ----- calling the agent the way the cloud must ---------------------------------------------


@dataclass
class CallResult:
    response: dict
    sends: int  # the request frame was sent this many times (1 + resends after reconnects)
    seconds: float


class CloudCaller:
    """Calls the agent as the real cloud has to: one id per request, and the same request again
    when the agent reconnected before answering (its frame may have died with the connection).
    The agent never runs an id twice: a repeat gets the stored response, or the running one's.

    Works through the relay's Python API (FakeRelay.submit) or its HTTP API (POST /api/request,
    then POST /api/raw for a resend, so the first HTTP call keeps waiting for the one answer).
    """

    def __init__(self, relay: FakeRelay, http: bool = False, poll_s: float = 0.05):
        self.relay = relay
        self.http = RelayClient(relay.port, relay.key) if http else None
        self._poll_s = poll_s
        self._pool = concurrent.futures.ThreadPoolExecutor(8, "http-caller") if http else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _submit(self, frame: dict, timeout_s: float) -> concurrent.futures.Future:
        if self.http is None:
            return self.relay.submit(frame["action"], frame["params"], frame["id"], timeout_s)

        def over_http() -> dict:
            try:
                return self.http.request(frame["action"], frame["params"], frame["id"], timeout_s)
            except RelayClient.Error as exc:
                if exc.status == 503:
                    raise AgentNotConnected(str(exc)) from None
                if exc.status == 504:
                    raise RequestTimedOut(str(exc)) from None
                raise

        return self._pool.submit(over_http)

    def _resend(self, frame: dict) -> bool:
        try:
            if self.http is None:
                self.relay.send_raw(json.dumps(frame))
            else:
                self.http.send_raw(json.dumps(frame))
            return True
        except (AgentNotConnected, ConnectionError, RelayClient.Error):
            return False

    def call(self, action: str, params: Optional[dict], request_id: str, timeout_s: float = 120) -> CallResult:
        frame = {"type": "request", "id": request_id, "action": action, "params": params or {}}
        started = time.monotonic()
        deadline = started + timeout_s
        future: Optional[concurrent.futures.Future] = None
        sends, sent_on = 0, 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"request {request_id} ({action}) unanswered after {timeout_s:g} s and {sends} sends"
                )
            if future is None:
                self.relay.wait_until(lambda: self.relay.connected, timeout=left, what="the agent")
                sent_on = self.relay.connections
                future = self._submit(frame, left)
                sends += 1
            try:
                return CallResult(future.result(timeout=self._poll_s), sends, time.monotonic() - started)
            except (AgentNotConnected, ConnectionError):
                future = None  # never reached the agent: send it again once it is back
            except concurrent.futures.TimeoutError:
                pass
            if self.relay.connections != sent_on and self.relay.connected and not future.done():
                current = self.relay.connections
                if self._resend(frame):
                    sends += 1
                    sent_on = current


def status(relay: FakeRelay, timeout_s: float = 10) -> dict:
    """The agent's status action (inline on the agent: answered even when its workers are busy)."""
    response = relay.request("status", timeout_s=timeout_s)
    if not response.get("ok"):
        raise AssertionError(f"status failed: {response}")
    return response["data"]


def wait_status(
    relay: FakeRelay, predicate: Callable[[dict], Any], timeout_s: float = 60, what: str = "status", poll_s: float = 0.1
) -> Tuple[dict, float]:
    """Poll the status action until predicate(data); returns (data, seconds waited)."""
    started = time.monotonic()
    while True:
        try:
            data = status(relay, timeout_s=5)
        except (AgentNotConnected, RequestTimedOut, ConnectionError, concurrent.futures.TimeoutError):
            data = None
        if data is not None and predicate(data):
            return data, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not reached within {timeout_s:g} s; last status {data}")
        time.sleep(poll_s)


# ----- what to ask for -----------------------------------------------------------------------

CHAIN_TICKERS = ("SPY", "AAPL", "MSFT")


def option_contracts(market: Market, count: int, tickers: Sequence[str] = CHAIN_TICKERS) -> List[dict]:
    """`count` distinct listed option contracts (fetch-prices params), nearest expirations first,
    taken round robin over the tickers."""
    per_ticker = [
        sorted(market.options(t), key=lambda o: (o.expiry, abs(o.strike - market.spot(t)), o.right)) for t in tickers
    ]
    picked = [o for group in itertools.zip_longest(*per_ticker) for o in group if o is not None][:count]
    if len(picked) < count:
        raise ValueError(f"the fake market lists only {len(picked)} options of {tickers}")
    return [{"ticker": o.symbol, "expiration": o.expiry, "strike": o.strike, "right": o.right} for o in picked]


def chain_requests(market: Market, count: int, size: int) -> List[dict]:
    """`count` fetch-chain params of about `size` contracts each: whole expirations of one ticker
    grouped until they list about `size` options (an expiration far bigger than that alone is cut
    down with strikes_around), tickers taken in turn; groups are reused once all are taken."""
    per_ticker: List[List[dict]] = []
    for ticker in CHAIN_TICKERS:
        groups, expirations, listed = [], [], 0
        options = market.options(ticker)
        for expiration in market.expirations(ticker):
            n = sum(1 for o in options if o.expiry == expiration)
            if n > 1.5 * size:
                groups.append({"ticker": ticker, "expirations": [expiration], "strikes_around": max(1, size // 4)})
                continue
            expirations.append(expiration)
            listed += n
            if listed >= 0.75 * size:
                groups.append({"ticker": ticker, "expirations": expirations})
                expirations, listed = [], 0
        per_ticker.append(groups)
    ordered = [g for row in itertools.zip_longest(*per_ticker) for g in row if g is not None]
    return [dict(ordered[i % len(ordered)]) for i in range(count)]


def order_params(market: Market, index: int = 0, **changes) -> dict:
    """A valid paper limit order that rests (a sell well above the ask), so nothing fills."""
    suitable = [
        o
        for o in market.options("AAPL")
        if 0.5 < market.quote(o).bid < market.quote(o).ask < 20 and on_tick(market.quote(o).ask, o.min_tick)
    ]
    option = suitable[index % len(suitable)]
    params = {
        "contract": {
            "ticker": "AAPL",
            "sec_type": "OPT",
            "expiration": option.expiry,
            "strike": option.strike,
            "right": option.right,
        },
        "action": "SELL",
        "quantity": 1,
        "order_type": "LMT",
        "limit_price": round(market.quote(option).ask + 20 * option.min_tick, 2),
    }
    params.update(changes)
    return params


# ----- the soak ------------------------------------------------------------------------------


# (weight, action, params builder): the callers' mix; a builder gets the caller's random.Random.
def _traffic(market: Market) -> List[Tuple[int, str, Callable[[random.Random], dict]]]:
    contracts = option_contracts(market, 400)
    chains = chain_requests(market, 12, 40)
    return [
        (30, "status", lambda rng: {}),
        (15, "quote", lambda rng: {"tickers": rng.sample(["AAPL", "MSFT", "SPY", "MRGT"], rng.randint(1, 4))}),
        (10, "expirations", lambda rng: {"ticker": rng.choice(["AAPL", "MSFT", "SPY", "MRGT"])}),
        (20, "fetch-prices", lambda rng: {"contracts": rng.sample(contracts, rng.randint(1, 60))}),
        (6, "fetch-chain", lambda rng: rng.choice(chains)),
        (
            4,
            "sell-scan",
            lambda rng: {
                "ticker": rng.choice(["AAPL", "MSFT"]),
                "right": rng.choice("CP"),
                "max_days": 30,
                "otm_max_pct": 8,
            },
        ),
        (5, "positions", lambda rng: {}),
        (4, "account-summary", lambda rng: {}),
        (4, "open-orders", lambda rng: {}),
        (4, "quote", lambda rng: {"tickers": ["NOT A TICKER!"]}),  # a bad request
        (2, "launch-rocket", lambda rng: {}),  # an unknown action
    ]


@dataclass
class SoakReport:
    minutes: float
    sent: int = 0
    answered: int = 0
    unanswered: List[str] = field(default_factory=list)
    by_action: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    resends: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    order_ids: int = 0
    order_sends: int = 0
    bad_frames: int = 0
    relay_back_s: List[float] = field(default_factory=list)  # from a drop to the agent's next hello
    tws_back_s: List[float] = field(default_factory=list)  # from TWS listening again to connected
    samples: List[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, result: Optional[CallResult], request_id: str) -> None:
        with self.lock:
            self.sent += 1
            self.by_action[action] += 1
            if result is None:
                self.unanswered.append(request_id)
                return
            self.answered += 1
            self.resends += result.sends - 1
            if not result.response.get("ok"):
                error = result.response["error"]
                repeat = error["code"] == "INVALID_REQUEST" and "already answered" in error["message"]
                self.errors["INVALID_REQUEST (a repeated id, already answered)" if repeat else error["code"]] += 1


class Soak:
    """One run: the fakes in this process, the agent as a process with the product's timings."""

    RSS_GROWTH_LIMIT_MB = 25.0
    THREAD_GROWTH_LIMIT = 4

    def __init__(
        self,
        minutes: float,
        callers: int,
        seed: int,
        relay_drop_s: float,
        tws_fault_s: float,
        tws_down_s: float,
        log: Callable[[str], None] = print,
    ):
        self.minutes = minutes
        self.callers = callers
        self.rng = random.Random(seed)
        self.relay_drop_s = relay_drop_s
        self.tws_fault_s = tws_fault_s
        self.tws_down_s = tws_down_s
        self.log = log
        self.report = SoakReport(minutes)
        self.stopping = threading.Event()
        self.ids = itertools.count(1)

    def run(self) -> int:
        data_dir = Path(tempfile.mkdtemp(prefix="soak-agent-"))
        stack = AgentStack(tws_options={"pacing": "reject", "max_rate": 50, "max_lines": 100}, agent=False)
        try:
            stack.start()
            self.stack, self.relay, self.tws = stack, stack.relay, stack.tws
            self.agent = start_agent(stack, data_dir)
            wait_status(self.relay, lambda s: s["connected"], 60, "TWS connected")
            self.gauge = Gauge(self.agent.pid)
            return self._soak()
        finally:
            if getattr(self, "agent", None) is not None:
                self.agent.stop()
            stack.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    def _soak(self) -> int:
        traffic = _traffic(self.tws.market)
        self._call_all(traffic, rounds=2)  # warm-up: imports, caches, warm lines
        start = dict(self.gauge.sample(), **{"served": status(self.relay)["requests_served"]})
        self.report.samples.append(dict(start, minute=0))
        self.log(f"start: rss {start['rss_mb']} MB, {start['threads']} threads")
        started = time.monotonic()
        workers = [threading.Thread(target=self._caller, args=(traffic, n), daemon=True) for n in range(self.callers)]
        workers += [
            threading.Thread(target=target, daemon=True)
            for target in (self._orders, self._bad_frames, self._relay_faults, self._tws_faults)
        ]
        for worker in workers:
            worker.start()
        minute = 0
        while time.monotonic() - started < self.minutes * 60:
            time.sleep(1)
            if time.monotonic() - started >= (minute + 1) * 60:
                minute += 1
                sample = dict(self.gauge.sample(), minute=minute)
                self.report.samples.append(sample)
                self.log(
                    f"minute {minute}: {self.report.sent} requests, rss {sample['rss_mb']} MB, "
                    f"{sample['threads']} threads, faults {dict(self.report.faults)}"
                )
        self.stopping.set()
        for worker in workers:
            worker.join(180)
        wait_status(self.relay, lambda s: s["connected"] and s["in_flight"] == 0, 120, "quiet agent")
        time.sleep(2)  # let the agent settle (warm lines, closed sockets) before the last sample
        end = dict(self.gauge.sample(), **{"served": status(self.relay)["requests_served"]})
        return self._print_report(start, end, time.monotonic() - started)

    def _call(
        self, action: str, params: dict, request_id: Optional[str] = None, caller: Optional[CloudCaller] = None
    ) -> Optional[CallResult]:
        request_id = request_id or f"soak-{next(self.ids)}"
        try:
            result = (caller or CloudCaller(self.relay)).call(action, params, request_id, timeout_s=300)
        except TimeoutError:
            result = None
        self.report.record(action, result, request_id)
        return result

    def _call_all(self, traffic, rounds: int) -> None:
        rng = random.Random(0)
        for _ in range(rounds):
            for _, action, params in traffic:
                self._call(action, params(rng))

    def _caller(self, traffic, number: int) -> None:
        rng = random.Random(self.rng.random())
        caller = CloudCaller(self.relay, http=number % 2 == 1)
        weights = [w for w, _, _ in traffic]
        while not self.stopping.is_set():
            _, action, params = rng.choices(traffic, weights)[0]
            self._call(action, params(rng), caller=caller)
            self.stopping.wait(rng.uniform(0, 0.3))
        caller.close()

    def _orders(self) -> None:
        """Place-order under fresh ids, each sent again a few times (after faults too)."""
        rng = random.Random(self.rng.random())
        market = self.tws.market
        recent: collections.deque = collections.deque(maxlen=10)
        while not self.stopping.wait(rng.uniform(1, 4)):
            if recent and rng.random() < 0.6:
                request_id, params = rng.choice(recent)
            else:
                request_id = f"soak-order-{next(self.ids)}"
                params = order_params(market, self.report.order_ids)
                recent.append((request_id, params))
                self.report.order_ids += 1
            self.report.order_sends += 1
            self._call("place-order", params, request_id)

    def _bad_frames(self) -> None:
        rng = random.Random(self.rng.random())
        frames = [
            "not json",
            "[]",
            '{"type":"request"}',
            '{"type":"request","id":""}',
            '{"type":"warp","id":"x-%d"}',
            '{"type":"request","id":"bad-%d","action":"quote","params":7}',
            '{"type":"request","id":"bad-%d","action":"status","params":{"x":' + "[" * 50 + "]" * 50 + "}}",
            '{"type":"ack","id":"never-sent"}',
            '{"type":"cancel","id":"not-running"}',
        ]
        while not self.stopping.wait(rng.uniform(0.5, 2)):
            text = rng.choice(frames)
            if "%d" in text:
                text = text % next(self.ids)
            try:
                self.relay.send_raw(text)
                self.report.bad_frames += 1
            except AgentNotConnected:
                pass

    def _relay_faults(self) -> None:
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * self.relay_drop_s):
            connections = self.relay.connections
            dropped = time.monotonic()
            if self.relay.drop():
                self.report.faults["relay drop"] += 1
                self.relay.wait_until(
                    lambda: self.relay.connections > connections and self.relay.hello,
                    600,
                    "the agent back on the relay",
                )
                self.report.relay_back_s.append(round(time.monotonic() - dropped, 2))

    def _tws_faults(self) -> None:
        """In turn: drop, restart with a down time, 1100 then 1102, 1101, a client-id collision."""
        faults = itertools.cycle(("drop", "restart", "1100/1102", "1101", "client id taken"))
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * self.tws_fault_s):
            fault = next(faults)
            if fault == "drop":
                self.tws.drop_all()
            elif fault == "restart":
                self.tws.restart(self.tws_down_s)
                _, seconds = wait_status(self.relay, lambda st: st["connected"], 600, "TWS back", poll_s=0.05)
                self.report.tws_back_s.append(round(seconds, 2))
            elif fault == "1100/1102":
                self.tws.broadcast_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
                self.stopping.wait(3)
                self.tws.broadcast_error(
                    1102, "Connectivity between IB and Trader Workstation has been restored - data maintained."
                )
            elif fault == "1101":
                self.tws.broadcast_error(
                    1101, "Connectivity between IB and Trader Workstation has been restored - data lost."
                )
            else:
                taken = wait_status(self.relay, lambda st: True, 120, "status")[0]["client_id"]
                self.tws.busy_client_ids = {taken}
                self.tws.drop_all()
            self.report.faults[f"tws {fault}"] += 1

    def _print_report(self, start: dict, end: dict, seconds: float) -> int:
        r = self.report
        placed = self.tws.stats()
        orders = self.tws.orders.open_orders() + self.tws.orders.completed_orders()
        refs = collections.Counter(o.order_ref for o in orders)
        duplicates = {ref: n for ref, n in refs.items() if n > 1}
        rss_growth = end["rss_mb"] - start["rss_mb"]
        thread_growth = end["threads"] - start["threads"]
        lines = [
            f"soak: {seconds / 60:.1f} minutes, {self.callers} callers",
            f"requests: {r.sent} sent, {r.answered} answered, {len(r.unanswered)} unanswered, "
            f"{r.resends} resent after reconnects",
            f"agent requests_served: {start['served']} at start, {end['served']} at end "
            f"(+{end['served'] - start['served']})",
            f"by action: {dict(sorted(r.by_action.items()))}",
            f"errors by code: {dict(sorted(r.errors.items()))}",
            f"faults: {dict(sorted(r.faults.items()))}; bad frames: {r.bad_frames}",
            f"reconnects: relay {self.relay.connections - 1}, TWS {placed['connections'] - 1}",
            f"relay back after a drop (s): {r.relay_back_s}",
            f"agent connected after TWS was back (s): {r.tws_back_s}",
            f"fake TWS: pacing violations {placed['pacing_violations']}, line errors {placed['line_limit_errors']}, "
            f"max lines in use {placed['max_lines_in_use']}",
            f"orders: {r.order_ids} ids sent {r.order_sends} times, {placed['orders_placed']} placed, "
            f"{len(duplicates)} ids placed twice",
            f"relay protocol violations: {len(self.relay.violations)}",
            f"rss: {start['rss_mb']} MB at start, {end['rss_mb']} MB at end ({rss_growth:+.1f} MB)",
            f"threads: {start['threads']} at start, {end['threads']} at end ({thread_growth:+d})",
            "samples: " + ", ".join(f"{s['minute']}m {s['rss_mb']}MB/{s['threads']}t" for s in r.samples),
        ]
        problems = []
        if r.unanswered:
            problems.append(f"unanswered: {r.unanswered[:10]}")
        if duplicates or placed["orders_placed"] > r.order_ids:
            problems.append(f"orders placed twice: {duplicates}")
        if rss_growth > self.RSS_GROWTH_LIMIT_MB or thread_growth > self.THREAD_GROWTH_LIMIT:
            problems.append("memory or threads grew")
        if self.relay.violations:
            problems.append(f"protocol violations: {self.relay.violations[:5]}")
        if self.agent.process.poll() is not None:
            problems.append(f"the agent exited ({self.agent.process.returncode})")
        if DEFAULT_KEY in self.agent.everything():
            problems.append("the key appears in the agent's output")
        lines.append("result: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
        self.log("\n".join(lines))
        return 0 if not problems else 1


def measure_reconnects(
    tws_restarts: int, tws_down_s: float, relay_flaps: int, log: Callable[[str], None] = print
) -> int:
    """The product's own reconnect timing, without traffic: TWS refusing connections for
    tws_down_s and back, tws_restarts times; then the relay cut again one second after each
    reconnect, relay_flaps times in a row (a flapping link)."""
    data_dir = Path(tempfile.mkdtemp(prefix="soak-reconnects-"))
    stack = AgentStack(agent=False)
    agent = None
    try:
        stack.start()
        agent = start_agent(stack, data_dir)
        relay, tws = stack.relay, stack.tws
        wait_status(relay, lambda s: s["connected"], 60, "TWS connected")
        tws_back = []
        for _ in range(tws_restarts):
            tws.restart(tws_down_s)
            _, seconds = wait_status(relay, lambda s: s["connected"], 600, "TWS back", poll_s=0.05)
            tws_back.append(round(seconds, 2))
            log(f"TWS back after {tws_down_s:g} s down: agent connected {seconds:.2f} s later")
        relay_back = []
        for _ in range(relay_flaps):
            time.sleep(1)
            connections = relay.connections
            relay.drop()
            dropped = time.monotonic()
            relay.wait_until(lambda: relay.connections > connections and relay.hello, 600, "relay back")
            relay_back.append(round(time.monotonic() - dropped, 2))
            log(f"relay cut: agent back {relay_back[-1]:.2f} s later")
        within = sum(1 for s in tws_back if s <= 5.0)
        log(f"TWS: {within} of {len(tws_back)} recoveries within 5 s; seconds: {sorted(tws_back)}")
        log(f"relay, cut again 1 s after each reconnect: seconds to come back, in order: {relay_back}")
        return 0
    finally:
        if agent is not None:
            agent.stop()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=6, help="parallel callers (half of them over HTTP)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--relay-drop-s", type=float, default=45.0, help="mean seconds between relay drops")
    parser.add_argument("--tws-fault-s", type=float, default=40.0, help="mean seconds between TWS faults")
    parser.add_argument("--tws-down-s", type=float, default=10.0, help="how long a TWS restart refuses connections")
    parser.add_argument(
        "--reconnects",
        action="store_true",
        help="instead of the soak: time --tws-restarts TWS restarts and --relay-flaps relay cuts",
    )
    parser.add_argument("--tws-restarts", type=int, default=8)
    parser.add_argument("--relay-flaps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.reconnects:
        return measure_reconnects(
            args.tws_restarts, args.tws_down_s, args.relay_flaps, log=lambda text: print(text, flush=True)
        )
    soak = Soak(
        args.minutes,
        args.callers,
        args.seed,
        args.relay_drop_s,
        args.tws_fault_s,
        args.tws_down_s,
        log=lambda text: print(text, flush=True),
    )
    return soak.run()


if __name__ == "__main__":
    sys.exit(main())
