"""A TWS that stops reading in the middle of a batch (issue 17, "a hung TWS").

    python -m bench.stall                          # 1,000 contracts, TWS stopped 20 s from 5 s in
    python -m bench.stall --contracts 300 --stall-s 5 --at-s 3 --json out.json

The agent runs as a user runs it (its own process, through tests.fake_relay), against
`python -m tests.fake_tws --pacing reject --max-rate 50 --max-lines 100` in its own process, which
is frozen with SIGSTOP `--at-s` seconds into a `fetch-prices` batch and resumed with SIGCONT
`--stall-s` later: what a hung or paused TWS does (its socket stays open and accepts bytes into the
kernel's buffers, nobody reads them). With --pacing reject the fake answers more than 50 messages in
any 1 s window with error 100 and drops the client at the third, as TWS does: so 0 violations and
1 connection prove the agent never sent a burst when TWS resumed.

Figures: the batch's time, how many options came back complete / with an error, pacing violations
and connections at the fake, messages the fake received, and the agent's log line that names the
messages TWS found waiting when it resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Optional, Sequence

from bench.common import COUNTERS, fresh_stats, option_contracts, stats_delta
from bench.footprint import agent_under_test


def stall_figures(contracts: int, stall_s: float, at_s: float) -> dict:
    with agent_under_test() as session:
        session.start()
        tws = session.tws
        before = fresh_stats(tws.stats_file)
        params = {"contracts": [c.params() for c in option_contracts(contracts)]}
        outcome: dict = {}

        def run_batch() -> None:
            started = time.monotonic()
            outcome["response"] = session.relay.request("fetch-prices", params, timeout_s=contracts / 5 + stall_s + 120)
            outcome["batch_s"] = time.monotonic() - started

        batch = threading.Thread(target=run_batch, name="stall-batch")
        batch.start()
        time.sleep(at_s)
        os.kill(tws.server.pid, signal.SIGSTOP)
        try:
            time.sleep(stall_s)
        finally:
            os.kill(tws.server.pid, signal.SIGCONT)
        batch.join()
        after = fresh_stats(tws.stats_file)
        delta = stats_delta(before, after)
        response = outcome["response"]
        options = response["data"]["options"] if response.get("ok") else []
        waiting = [line for line in session.agent.output.splitlines() if "messages were waiting for it" in line]
        return {
            "contracts": contracts,
            "stall_s": stall_s,
            "stall_at_s": at_s,
            "answered": bool(response.get("ok")),
            "error": None if response.get("ok") else response.get("error"),
            "batch_s": round(outcome["batch_s"], 1),
            "complete": sum(1 for o in options if o["complete"]),
            "with_error": sum(1 for o in options if o["error"]),
            **{key: delta[key] for key in COUNTERS},
            "agent_said": waiting[-1].split("] ")[-1] if waiting else None,
        }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=1000)
    parser.add_argument("--stall-s", type=float, default=20.0)
    parser.add_argument("--at-s", type=float, default=5.0, help="seconds into the batch when TWS stops")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    figures = stall_figures(args.contracts, args.stall_s, args.at_s)
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)
    ok = figures["answered"] and figures["pacing_violations"] == 0 and figures["connections"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
