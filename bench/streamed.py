"""Streamed chains (issue 19): how much sooner a client has the nearest expiration with
`"partial": true` than the whole chain.

    python -m bench.streamed                  # SPY max_days 60, one cold run (about a minute and a half)
    python -m bench.streamed --plain          # and a second cold run without partial, to compare
    python -m bench.streamed --json PATH      # also write the figures

A fresh agent process behind tests.fake_relay asks `fetch-chain SPY max_days 60 partial:true`
against a fresh fake TWS as bench.run starts it (`--pacing reject --max-rate 50 --max-lines 100`).
Figures, in seconds from the request: each partial frame's arrival (the first is what a chain view
waits for), the response's; the options per expiration; and the pacing floor of the whole chain
(a request and a cancel per option at 50 messages/s), which the response cannot beat.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import List, Optional, Sequence

from bench.common import TWS_MAX_RATE, fresh_stats, stats_delta
from bench.footprint import agent_under_test

TICKER = "SPY"
MAX_DAYS = 60
REQUEST_ID = "streamed-chain"


def _watch_partials(relay, request_id: str, started: float, times: List[float], stop: threading.Event) -> None:
    """Record when each partial frame of the request arrived (relay.wait_until wakes on every frame)."""
    while not stop.is_set():
        seen = len(times)
        try:
            relay.wait_until(lambda: stop.is_set() or len(relay.partials.get(request_id, ())) > seen, 600, "a partial")
        except TimeoutError:
            return
        now = time.monotonic() - started
        times.extend([now] * (len(relay.partials.get(request_id, ())) - len(times)))


def streamed_chain(
    max_days: int = MAX_DAYS, strikes_around: Optional[int] = None, partial: bool = True, timeout_s: float = 600
) -> dict:
    """One cold `fetch-chain SPY` (with partial frames unless partial=False): when they and the
    response arrived."""
    params: dict = {"ticker": TICKER, "max_days": max_days, "partial": partial}
    if strikes_around is not None:
        params["strikes_around"] = strikes_around
    with agent_under_test() as session:
        session.start()
        relay = session.relay
        before = fresh_stats(session.tws.stats_file)
        times: List[float] = []
        stop = threading.Event()
        started = time.monotonic()
        watcher = threading.Thread(target=_watch_partials, args=(relay, REQUEST_ID, started, times, stop), daemon=True)
        watcher.start()
        response = relay.request("fetch-chain", params, id=REQUEST_ID, timeout_s=timeout_s)
        response_s = time.monotonic() - started
        stop.set()
        watcher.join(5)  # it sees `stop` within its 0.2 s re-check
        after = fresh_stats(session.tws.stats_file)
        frames = list(relay.partials.get(REQUEST_ID, ()))
    if not response.get("ok"):
        raise RuntimeError(f"fetch-chain failed: {response.get('error')}")
    data, delta = response["data"], stats_delta(before, after)
    options = len(data["options"])
    return {
        "params": params,
        "options": options,
        "expirations": len(data["expirations"]),
        "partials": len(frames),
        "partials_cover_response": [o for f in frames for o in f["options"]] == data["options"],
        "first_partial_s": round(times[0], 3) if times else None,
        "first_partial_options": len(frames[0]["options"]) if frames else 0,
        "partial_s": [round(t, 3) for t in times],
        "options_per_expiration": [len(f["options"]) for f in frames],
        "response_s": round(response_s, 3),
        "floor_s": round(2 * options / TWS_MAX_RATE, 3),
        "pacing_violations": delta["pacing_violations"],
        "line_limit_errors": delta["line_limit_errors"],
    }


def table(result: dict) -> str:
    if not result["params"]["partial"]:
        return f"  without partial: response {result['response_s']} s, {result['options']} options"
    lines = [
        f"fetch-chain {TICKER} {json.dumps(result['params'])}: {result['options']} options, "
        f"{result['expirations']} expirations, {result['partials']} partial frames",
        f"  first partial   {result['first_partial_s']:>8} s  ({result['first_partial_options']} options)",
        f"  response        {result['response_s']:>8} s  (pacing floor {result['floor_s']} s)",
        "  each partial    " + ", ".join(f"{t:g}" for t in result["partial_s"]),
        f"  pacing violations {result['pacing_violations']}, line errors {result['line_limit_errors']}",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streamed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-days", type=int, default=MAX_DAYS)
    parser.add_argument("--strikes-around", type=int, help="fewer options (smoke runs)")
    parser.add_argument("--plain", action="store_true", help="also a cold run without partial frames")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    result = streamed_chain(args.max_days, args.strikes_around)
    print(table(result))
    if args.plain:
        result["without_partial"] = streamed_chain(args.max_days, args.strikes_around, partial=False)
        print(table(result["without_partial"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
