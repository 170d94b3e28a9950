"""Turning raw measurements into summaries, target checks and the printed tables."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from bench.common import TWS_MAX_RATE, median
from bench.listed import targets as listed_targets

AGENT = "agent"
LABELS = {
    "agent": "agent {rate:g}/s",
    "readme": "README chunks",
    "ib_async": "ib_async reqTickers",
    "ib_async_smooth": "ib_async smooth",
    "ib_async_chunked": "ib_async chunked",
}
PEERS = ("readme", "ib_async", "ib_async_smooth", "ib_async_chunked")

# The targets.
TARGET_RATIO = 1.2  # cold bulk: wall time / pacing floor of request + cancel per contract
WARM_MEDIAN_MS = 50.0
RELAY_MEDIAN_MS, RELAY_P99_MS = 2.0, 10.0
IDLE_RSS_MB, IDLE_CPU_PCT, READY_S = 60.0, 1.0, 1.5
LINEAR_RATIO = 1.2  # scaling: time per message at the worst size / at the smallest
# A peer that returns markedly less of the data has not done the same work faster.
COMPLETENESS_SLACK = 0.02


def label(method: str, rate: float) -> str:
    return LABELS[method].format(rate=rate)


def request_cancel_floor_s(count: int) -> float:
    """The issue's pacing floor: a streaming request and a cancel per contract at TWS's 50/s."""
    return 2 * count / TWS_MAX_RATE


def summarize_cold(runs: Sequence[dict]) -> List[dict]:
    """One row per (method, rate, count): medians over the repeats, sums of what must be zero."""
    groups: Dict[Tuple[str, float, int, Optional[int]], List[dict]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["rate"], run["count"], run.get("snapshot_ms")), []).append(run)
    rows = []
    for (method, rate, count, snapshot_ms), group in groups.items():
        ok = [r for r in group if "error" not in r]
        wall = median([r["wall_s"] for r in ok])
        messages = median([r["messages"] for r in ok])
        row = {
            "method": method,
            "label": label(method, rate),
            "rate": rate,
            "count": count,
            "snapshot_ms": snapshot_ms,
            "runs": len(group),
            "failed": len(group) - len(ok),
            "errors": sorted({r["error"] for r in group if "error" in r}),
            "wall_s": wall,
            "messages": messages,
            "floor_request_cancel_s": request_cancel_floor_s(count),
            "floor_own_50_s": messages / TWS_MAX_RATE if messages is not None else None,
            "floor_own_rate_s": messages / rate if messages is not None else None,
            "pacing_violations": sum(r.get("pacing_violations", 0) for r in group),
            "line_limit_errors": sum(r.get("line_limit_errors", 0) for r in group),
            "dropped": sum(1 for r in group if r.get("dropped")),
            "max_lines_in_use": max((r.get("max_lines_in_use", 0) for r in group), default=0),
            "completeness": min((r["completeness"] for r in ok), default=None),
            "rss_before_mb": median([r["rss_before_mb"] for r in ok]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in ok]),
        }
        for floor in ("request_cancel", "own_50", "own_rate"):
            value = row[f"floor_{floor}_s"]
            row[f"ratio_{floor}"] = round(wall / value, 3) if wall is not None and value else None
        rows.append(row)
    return rows


def side_by_side(runs: Sequence[dict], agent_rate: float) -> List[dict]:
    """Agent wall time / peer wall time, per repeat (same run, neighbouring measurements), then the
    median of those ratios."""
    by_key = {(r["repeat"], r["method"], r["rate"], r["count"]): r for r in runs if "error" not in r}
    rows = []
    for count in sorted({r["count"] for r in runs}):
        for peer in PEERS:
            ratios = []
            for (repeat, method, _rate, n), run in by_key.items():
                if method == peer and n == count:
                    agent = by_key.get((repeat, AGENT, agent_rate, count))
                    if agent is not None:
                        ratios.append(agent["wall_s"] / run["wall_s"])
            if ratios:
                rows.append(
                    {"count": count, "peer": peer, "agent_over_peer": round(median(ratios), 3), "pairs": len(ratios)}
                )
    return rows


def scaling_rows(cold_summary: Sequence[dict], extra_runs: Sequence[dict], agent_rate: float) -> List[dict]:
    rows = [r for r in cold_summary if r["method"] == AGENT and r["rate"] == agent_rate]
    rows += summarize_cold(extra_runs)
    rows.sort(key=lambda r: r["count"])
    base = next((r for r in rows if r["wall_s"]), None)
    out = []
    for row in rows:
        per_1000 = row["wall_s"] / row["count"] * 1000 if row["wall_s"] else None
        per_message = row["wall_s"] / row["messages"] if row["wall_s"] and row["messages"] else None
        grown = (row["peak_rss_mb"] - row["rss_before_mb"]) if row["peak_rss_mb"] is not None else None
        out.append(
            {
                "count": row["count"],
                "wall_s": row["wall_s"],
                "s_per_1000": _round(per_1000, 2),
                "per_contract_vs_smallest": _round(per_1000 / (base["wall_s"] / base["count"] * 1000), 3)
                if per_1000 and base
                else None,
                "per_message_vs_smallest": _round(per_message / (base["wall_s"] / base["messages"]), 3)
                if per_message and base
                else None,
                "ratio_request_cancel": row["ratio_request_cancel"],
                "messages": row["messages"],
                "rss_before_mb": row["rss_before_mb"],
                "peak_rss_mb": row["peak_rss_mb"],
                "peak_growth_mb": _round(grown, 1),
                "pacing_violations": row["pacing_violations"],
                "line_limit_errors": row["line_limit_errors"],
                "failed": row["failed"],
            }
        )
    return out


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return round(value, digits) if value is not None else None


# ---- targets ---------------------------------------------------------------------------------


def targets(results: dict, agent_rate: float) -> List[dict]:
    checks: List[dict] = []

    def check(name: str, target: str, value, met: Optional[bool]) -> None:
        checks.append({"name": name, "target": target, "value": value, "met": met})

    cold = {(r["method"], r["rate"], r["count"]): r for r in results.get("cold_bulk", {}).get("summary", [])}
    for (method, rate, count), row in sorted(cold.items(), key=lambda kv: kv[0][2]):
        if method != AGENT or rate != agent_rate:
            continue
        check(
            f"cold {count}: time / floor (2 msgs per contract at 50/s)",
            f"<= {TARGET_RATIO}",
            row["ratio_request_cancel"],
            _le(row["ratio_request_cancel"], TARGET_RATIO) and not row["failed"],
        )
        zero = row["pacing_violations"] + row["line_limit_errors"] + row["dropped"]
        check(f"cold {count}: pacing violations + line errors + drops", "0", zero, zero == 0)
        for peer in PEERS:
            other = next((r for k, r in cold.items() if k[0] == peer and k[2] == count), None)
            if other is not None:
                check(
                    f"cold {count}: faster than {LABELS[peer]}",
                    "agent < peer, or peer incomplete",
                    *_versus(row, other),
                )
    for warm in results.get("warm_refresh", [])[:1]:  # the default config; a variant is for comparison
        which = warm["config"]
        check(
            f"warm refresh ({which}): median",
            f"< {WARM_MEDIAN_MS:g} ms",
            warm["median_ms"],
            _lt(warm["median_ms"], WARM_MEDIAN_MS),
        )
        check(f"warm refresh ({which}): new reqMktData", "0", warm["new_reqMktData"], warm["new_reqMktData"] == 0)
    relay = results.get("relay_overhead")
    if relay:
        check(
            "relay status round trip: median",
            f"< {RELAY_MEDIAN_MS:g} ms",
            relay["median_ms"],
            _lt(relay["median_ms"], RELAY_MEDIAN_MS),
        )
        check(
            "relay status round trip: p99",
            f"< {RELAY_P99_MS:g} ms",
            relay["p99_ms"],
            _lt(relay["p99_ms"], RELAY_P99_MS),
        )
    foot = results.get("footprint")
    if foot:
        check(
            "idle resident memory", f"< {IDLE_RSS_MB:g} MB", foot["rss_idle_mb"], _lt(foot["rss_idle_mb"], IDLE_RSS_MB)
        )
        check(
            f"idle CPU over {foot['idle_s']:g} s",
            f"< {IDLE_CPU_PCT:g} %",
            foot["cpu_idle_pct"],
            _lt(foot["cpu_idle_pct"], IDLE_CPU_PCT),
        )
        check(
            "start to ready (median)", f"< {READY_S:g} s", foot["ready_median_s"], _lt(foot["ready_median_s"], READY_S)
        )
    listed_targets(results.get("listed"), results.get("listed_chain"), check)
    scaling = results.get("scaling") or []
    if len(scaling) > 1:
        # per message, not per contract: the first WARM_LINES contracts of a batch need no cancel
        worst = max((r["per_message_vs_smallest"] or 0) for r in scaling)
        check(
            "scaling: time per message sent, worst size / smallest",
            f"<= {LINEAR_RATIO} (linear)",
            worst,
            worst <= LINEAR_RATIO and not any(r["failed"] for r in scaling),
        )
    return checks


def _versus(agent: dict, peer: dict) -> Tuple[str, bool]:
    """The agent beats a peer that is slower, failed, or left out more of the data."""
    incomplete = (
        peer["completeness"] is not None
        and agent["completeness"] is not None
        and peer["completeness"] < agent["completeness"] - COMPLETENESS_SLACK
    )
    faster = agent["wall_s"] is not None and (peer["wall_s"] is None or agent["wall_s"] < peer["wall_s"])
    text = f"{_fmt(agent['wall_s'])} s vs {_fmt(peer['wall_s'])} s"
    if peer["failed"]:
        text += f" (peer failed {peer['failed']} of {peer['runs']})"
    if incomplete:
        text += f" (peer complete {peer['completeness']:.2f}, agent {agent['completeness']:.2f})"
    return text, faster or incomplete


def _le(value, limit) -> bool:
    return value is not None and value <= limit


def _lt(value, limit) -> bool:
    return value is not None and value < limit


# ---- printing --------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines)


def render(results: dict) -> str:
    parts = []
    m = results["machine"]
    parts.append(
        f"machine: {m['nproc']} x {m['cpu']}, {m['memory_gb']} GB, Python {m['python']}, "
        f"load average at start {m['load_average']} / at end {results.get('load_average_end')}; "
        f"commit {results.get('commit')}"
    )
    cold = results.get("cold_bulk")
    if cold:
        parts.append(
            table(
                f"Cold bulk quotes (medians of {results['settings']['repeats']} run(s); floor = 2 msgs per contract "
                f"at {TWS_MAX_RATE}/s)",
                (
                    "method",
                    "contracts",
                    "wall s",
                    "msgs",
                    "floor s",
                    "ratio",
                    "own msgs/50",
                    "own msgs/rate",
                    "violations",
                    "line errs",
                    "dropped",
                    "max lines",
                    "complete",
                    "failed",
                ),
                [
                    (
                        r["label"],
                        r["count"],
                        r["wall_s"],
                        r["messages"],
                        r["floor_request_cancel_s"],
                        r["ratio_request_cancel"],
                        r["ratio_own_50"],
                        r["ratio_own_rate"],
                        r["pacing_violations"],
                        r["line_limit_errors"],
                        r["dropped"],
                        r["max_lines_in_use"],
                        r["completeness"],
                        r["failed"],
                    )
                    for r in sorted(cold["summary"], key=lambda r: (r["count"], r["label"]))
                ],
            )
        )
        if cold["side_by_side"]:
            parts.append(
                table(
                    "Agent / peer wall time, same repeat (median of ratios)",
                    ("contracts", "peer", "agent/peer", "pairs"),
                    [(r["count"], LABELS[r["peer"]], r["agent_over_peer"], r["pairs"]) for r in cold["side_by_side"]],
                )
            )
    if results.get("scaling"):
        parts.append(
            table(
                "Scaling (agent, default rate)",
                (
                    "contracts",
                    "wall s",
                    "s/1000",
                    "per contract vs smallest",
                    "msgs",
                    "per msg vs smallest",
                    "ratio to floor",
                    "rss before MB",
                    "peak MB",
                    "growth MB",
                    "violations",
                    "failed",
                ),
                [
                    (
                        r["count"],
                        r["wall_s"],
                        r["s_per_1000"],
                        r["per_contract_vs_smallest"],
                        r["messages"],
                        r["per_message_vs_smallest"],
                        r["ratio_request_cancel"],
                        r["rss_before_mb"],
                        r["peak_rss_mb"],
                        r["peak_growth_mb"],
                        r["pacing_violations"],
                        r["failed"],
                    )
                    for r in results["scaling"]
                ],
            )
        )
    if results.get("snapshot_sweep"):
        parts.append(
            table(
                "Snapshot peers against the fake's snapshot duration (one run each)",
                (
                    "snapshot ms",
                    "method",
                    "contracts",
                    "wall s",
                    "msgs",
                    "line errs",
                    "violations",
                    "dropped",
                    "max lines",
                    "complete",
                    "failed",
                ),
                [
                    (
                        r["snapshot_ms"],
                        r["label"],
                        r["count"],
                        r["wall_s"],
                        r["messages"],
                        r["line_limit_errors"],
                        r["pacing_violations"],
                        r["dropped"],
                        r["max_lines_in_use"],
                        r["completeness"],
                        r["failed"],
                    )
                    for r in sorted(results["snapshot_sweep"], key=lambda r: (r["snapshot_ms"], r["label"]))
                ],
            )
        )
    if results.get("warm_refresh"):
        parts.append(
            table(
                "Warm refresh through the relay (fetch-prices)",
                ("config", "contracts", "underlyings", "repeats", "cold ms", "median ms", "p90 ms", "new reqMktData"),
                [
                    (
                        w["config"],
                        w["contracts"],
                        w["underlyings"],
                        w["repeats"],
                        w["cold_ms"],
                        w["median_ms"],
                        w["p90_ms"],
                        w["new_reqMktData"],
                    )
                    for w in results["warm_refresh"]
                ],
            )
        )
    relay = results.get("relay_overhead")
    if relay:
        parts.append(
            table(
                "Relay overhead: status through fake_relay (Python API) and the agent",
                ("requests", "median ms", "p99 ms", "max ms", "callers", "req/s", "median ms (8)"),
                [
                    (
                        relay["requests"],
                        relay["median_ms"],
                        relay["p99_ms"],
                        relay["max_ms"],
                        relay["callers"],
                        relay["concurrent_req_per_s"],
                        relay["concurrent_median_ms"],
                    )
                ],
            )
        )
    foot = results.get("footprint")
    if foot:
        parts.append(
            table(
                "Footprint of the agent process",
                (
                    "ready median s",
                    "ready runs s",
                    "RSS idle MB",
                    f"CPU idle % ({foot['idle_s']:g} s)",
                    "batch",
                    "batch s",
                    "RSS after MB",
                    "peak MB",
                ),
                [
                    (
                        foot["ready_median_s"],
                        " ".join(f"{t:.3f}" for t in foot["ready_s"]),
                        foot["rss_idle_mb"],
                        foot["cpu_idle_pct"],
                        foot["batch_contracts"],
                        foot["batch_s"],
                        foot["rss_after_batch_mb"],
                        foot["peak_rss_mb"],
                    )
                ],
            )
        )
    listed = results.get("listed")
    if listed:
        a = listed["agent"]
        parts.append(
            table(
                f"Listed SPY options, cold through the relay (fetch-chain of {a['expirations']} expirations; floor = "
                f"2 msgs per option at {TWS_MAX_RATE}/s)",
                (
                    "options",
                    "wall s",
                    "floor s",
                    "ratio",
                    "quoted",
                    "msgs",
                    "msgs/quoted",
                    "target msgs/quoted",
                    "reqMktData",
                    "reqContractDetails",
                    "errors 200",
                    "violations",
                    "line errs",
                    "max lines",
                ),
                [
                    (
                        a["options"],
                        a["wall_s"],
                        a["floor_s"],
                        a["ratio"],
                        a["quoted_share"],
                        a["messages"],
                        a["msgs_per_quoted"],
                        a["target_msgs_per_quoted"],
                        a["reqMktData"],
                        a["listing_requests"],
                        a["errors_sent"].get("200", 0),
                        a["pacing_violations"],
                        a["line_limit_errors"],
                        a["max_lines_in_use"],
                    )
                ],
            )
        )
        if listed["peers"]:
            parts.append(
                table(
                    "The same work by the peers (peer wall time / agent's)",
                    (
                        "method",
                        "contracts asked",
                        "wall s",
                        "msgs",
                        "quoted",
                        "of listed",
                        "errors 200",
                        "violations",
                        "line errs",
                        "peer/agent",
                        "failed",
                    ),
                    [
                        (
                            LABELS[p["method"]] + (" (grid)" if p["pool"] == "spy-grid" else ""),
                            p["contracts"],
                            p["wall_s"],
                            p["messages"],
                            p["quoted"],
                            p["quoted_share_of_listed"],
                            p["tws_errors_200"],
                            p["pacing_violations"],
                            p["line_limit_errors"],
                            p["peer_over_agent"],
                            p["error"] or "",
                        )
                        for p in listed["peers"]
                    ],
                )
            )
    chain = results.get("listed_chain")
    if chain:
        parts.append(
            table(
                f"fetch-chain {chain['params']} (cold, through the relay)",
                (
                    "expirations",
                    "options",
                    "reqMktData",
                    "reqMktData - options",
                    "reqContractDetails",
                    "errors 200",
                    "wall s",
                    "violations",
                ),
                [
                    (
                        chain["expirations"],
                        chain["options"],
                        chain["reqMktData"],
                        chain["requests_over_options"],
                        chain["listing_requests"],
                        chain["errors_200"],
                        chain["wall_s"],
                        chain["pacing_violations"],
                    )
                ],
            )
        )
    parts.append(
        table(
            "Targets",
            ("check", "target", "value", "met"),
            [(t["name"], t["target"], t["value"], t["met"]) for t in results["targets"]],
        )
    )
    parts.append(f"suite took {results['elapsed_s']:.0f} s")
    return "\n\n".join(parts)
