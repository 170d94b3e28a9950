"""Listed chains (issue 17): option quotes for what TWS lists, cold, through the relay.

- `listed`: a fresh agent process (as a user runs it) behind tests.fake_relay asks `fetch-chain SPY`
  for the nearest expirations that together list at least N options, against a fresh fake TWS with
  `--pacing reject --max-rate 50 --max-lines 100`: the agent looks the underlying and its chain up,
  gets each expiration's listing (one reqContractDetails each) and streams every listed option.
  Figures: wall time against the pacing floor (one request + one cancel per option at 50/s), the
  messages TWS received per quoted option, pacing violations, line errors, error 200s TWS sent.
- `chain`: `fetch-chain SPY max_days 30` in another fresh agent: market-data requests against the
  options returned, and the error 200s TWS sent (a grid-built chain asks for contracts that do not
  exist; a listed one never does).
- The same work by the peers (bench.peers), each in a process of its own (bench.worker), in the
  same run: the original README's method builds the chain from the reqSecDefOptParams grid of the
  same expirations (expirations x strikes x rights, a superset) and quotes it in chunks of 50 with
  2.5 s waits; ib_async reqTickers quotes exactly the listed contracts, handed their conIds for free
  (its qualifying lookups are not counted). Ratios are peer wall time / agent wall time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from bench.common import SEED, TWS_MAX_RATE, BenchContract, fresh_stats, stats_delta
from bench.footprint import agent_under_test
from tests.fake_market import Market

TICKER = "SPY"
POOLS = ("spy-listed", "spy-grid")


@dataclass(frozen=True)
class ListedPlan:
    params: dict  # the fetch-chain params the agent is asked
    expirations: List[str]
    listed: List[BenchContract]  # what TWS lists for them: what fetch-chain returns
    grid: List[BenchContract]  # the reqSecDefOptParams grid of the same expirations (a superset)


def listed_plan(count: int, seed: int = SEED) -> ListedPlan:
    """The nearest SPY expirations that list at least `count` options together; for a count below
    the nearest expiration's listing (smoke runs), that one expiration with `strikes_around`."""
    market = Market(seed)
    chosen: List[str] = []
    listed: List = []
    for expiration in market.expirations(TICKER):
        if len(listed) >= count:
            break
        chosen.append(expiration)
        listed += market.find(symbol=TICKER, sec_type="OPT", expiry=expiration)
    params: dict = {"ticker": TICKER, "expirations": chosen}
    strikes = set(market.strikes(TICKER))
    if len(chosen) == 1 and len(listed) > count:
        around = max(1, math.ceil(count / 4))
        params["strikes_around"] = around
        spot = market.spot(TICKER)
        ordered = sorted(strikes)
        strikes = set([s for s in ordered if s <= spot][-around:] + [s for s in ordered if s > spot][:around])
        listed = [o for o in listed if o.strike in strikes]
    by_key = {(o.expiry, o.strike, o.right): o for o in listed}
    grid = []
    for _name, _multiplier, expirations, class_strikes in market.chain_classes(TICKER):
        for expiration in chosen:
            if expiration in expirations:
                for strike in sorted(set(class_strikes) & strikes):
                    for right in ("C", "P"):
                        option = by_key.get((expiration, strike, right))
                        grid.append(
                            BenchContract(
                                TICKER,
                                expiration,
                                strike,
                                right,
                                "SMART",
                                option.con_id if option else 0,
                                bool(option) and market.quote(option).bid > 0,
                            )
                        )
    return ListedPlan(params, chosen, [c for c in grid if c.con_id], grid)


def pool_contracts(pool: str, count: int, seed: int = SEED) -> List[BenchContract]:
    plan = listed_plan(count, seed)
    return plan.listed if pool == "spy-listed" else plan.grid


def _errors_delta(before: dict, after: dict) -> Dict[str, int]:
    was = before.get("errors_sent", {})
    return {code: n - was.get(code, 0) for code, n in after.get("errors_sent", {}).items() if n != was.get(code, 0)}


def agent_fetch_chain(params: dict, timeout_s: float) -> dict:
    """One cold fetch-chain through the relay: a fresh fake TWS, relay and agent process."""
    with agent_under_test() as session:
        session.start()
        before = fresh_stats(session.tws.stats_file)
        started = time.monotonic()
        error = None
        try:
            data = session.request("fetch-chain", params, timeout_s=timeout_s)
        except Exception as exc:  # reported with the figures the fake saw
            data, error = {"options": [], "expirations": []}, f"{exc.__class__.__name__}: {exc}"
        wall = time.monotonic() - started
        after = fresh_stats(session.tws.stats_file)
    delta = stats_delta(before, after)
    options = data["options"]
    quoted = sum(1 for o in options if o["error"] is None and o["ask"] is not None and o["delta"] is not None)
    requests = delta["requests_by_type"]
    result = {
        "method": "agent",
        "params": params,
        "wall_s": round(wall, 3),
        "options": len(options),
        "expirations": len(data["expirations"]),
        "quoted": quoted,
        "quoted_share": round(quoted / len(options), 4) if options else 0.0,
        "with_con_id": sum(1 for o in options if o.get("con_id")),
        "messages": delta["messages_in"],
        "requests_by_type": requests,
        "reqMktData": requests.get("reqMktData", 0),
        "listing_requests": requests.get("reqContractDetails", 0),
        "errors_sent": _errors_delta(before, after),
        "pacing_violations": delta["pacing_violations"],
        "line_limit_errors": delta["line_limit_errors"],
        "max_lines_in_use": delta["max_lines_in_use"],
    }
    if error:
        result["error"] = error
    return result


def summarize(agent: dict, peers: Sequence[dict]) -> dict:
    """The agent's figures against the floor and its message budget, and each peer beside it."""
    n, e = agent["options"], agent["expirations"]
    floor = 2 * n / TWS_MAX_RATE
    budget = 2 * (n + 1) + e + 2  # request + cancel per option and for the underlying, one listing per
    # expiration, the underlying's contract details and the chain's reqSecDefOptParams
    row = dict(
        agent,
        floor_s=round(floor, 3),
        ratio=round(agent["wall_s"] / floor, 3) if floor else None,
        msgs_per_quoted=round(agent["messages"] / agent["quoted"], 4) if agent["quoted"] else None,
        target_msgs_per_quoted=round((2 * n + e) / n, 4) if n else None,
        message_budget=budget,
    )
    side = []
    for peer in peers:
        side.append(
            {
                "method": peer["method"],
                "pool": peer.get("pool"),
                "contracts": peer.get("contracts"),
                "wall_s": peer.get("wall_s"),
                "messages": peer.get("messages"),
                "quoted": peer.get("quoted"),
                "quoted_share_of_listed": round(peer["quoted"] / n, 4)
                if n and peer.get("quoted") is not None
                else None,
                "tws_errors_200": (peer.get("tws_errors") or {}).get("200", 0),
                "pacing_violations": peer.get("pacing_violations"),
                "line_limit_errors": peer.get("line_limit_errors"),
                "dropped": peer.get("dropped"),
                "peer_over_agent": round(peer["wall_s"] / agent["wall_s"], 3)
                if peer.get("wall_s") and agent["wall_s"] and "error" not in peer
                else None,
                "error": peer.get("error"),
            }
        )
    return {"agent": row, "peers": side}


def chain_summary(chain: dict) -> dict:
    return dict(
        chain,
        requests_over_options=chain["reqMktData"] - chain["options"],
        errors_200=chain["errors_sent"].get("200", 0),
    )


def targets(listed: Optional[dict], chain: Optional[dict], check) -> None:
    """The issue's targets for listed chains, through report.targets' `check(name, target, value, met)`."""
    if listed:
        a = listed["agent"]
        n = a["options"]
        check(
            f"listed SPY {n}: time / floor (2 msgs per option at 50/s)",
            "<= 1.2",
            a["ratio"],
            a["ratio"] is not None and a["ratio"] <= 1.2 and "error" not in a,
        )
        zero = a["pacing_violations"] + a["line_limit_errors"]
        check(f"listed SPY {n}: pacing violations + line errors", "0", zero, zero == 0)
        check(f"listed SPY {n}: quoted", ">= 95 %", a["quoted_share"], a["quoted_share"] >= 0.95)
        check(
            f"listed SPY {n}: messages TWS received",
            f"<= {a['message_budget']} (2 per option + 1 per expiration, + underlying)",
            a["messages"],
            a["messages"] <= a["message_budget"],
        )
        check(
            f"listed SPY {n}: error 200 sent by TWS",
            "0",
            a["errors_sent"].get("200", 0),
            a["errors_sent"].get("200", 0) == 0,
        )
        for peer in listed["peers"]:
            check(
                f"listed SPY {n}: peer {peer['method']} ({peer['pool']}) time / agent's",
                "> 1 (agent faster)",
                peer["peer_over_agent"],
                peer["peer_over_agent"] is None or peer["peer_over_agent"] > 1,
            )
    if chain:
        check(
            f"fetch-chain SPY {chain['params']}: reqMktData - options returned",
            "<= 3",
            chain["requests_over_options"],
            chain["requests_over_options"] <= 3 and "error" not in chain,
        )
        check("fetch-chain SPY: error 200 sent by TWS", "0", chain["errors_200"], chain["errors_200"] == 0)
