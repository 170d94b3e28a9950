"""A tiny run of every benchmark code path (bench/), so the benchmarks cannot rot. No timings are
asserted: only that each measurement ran, kept TWS's limits, and reported its figures."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from bench import report
from bench.common import option_contracts
from bench.run import ROOT, Settings, run_suite

try:
    import ib_async  # noqa: F401

    PEERS, SWEEP_PEERS = ("readme", "ib_async_smooth"), ("ib_async_chunked",)
except Exception:  # Python 3.9: ib_async needs 3.10+
    PEERS, SWEEP_PEERS = ("readme",), ()

TINY = Settings(
    cold_sizes=(6,),
    scaling_sizes=(6, 12),
    peers=PEERS,
    agent_rates=(45.0,),
    repeats=1,
    relay_requests=16,
    warm_repeats=2,
    ready_starts=1,
    idle_s=0.2,
    footprint_batch=6,
    warm_contracts=4,
    warm_lines_variant=3,
    readme_wait_s=0.1,
    snapshot_ms=300,
    sweep_snapshot_ms=(0, 300) if SWEEP_PEERS else (),
    sweep_count=6,
    sweep_peers=SWEEP_PEERS,
    listed_count=6,
    listed_peers=("readme",) + SWEEP_PEERS,
    chain_max_days=3,
    chain_strikes_around=1,
)


class BenchSmokeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with contextlib.redirect_stderr(io.StringIO()):  # the suite's progress lines
            cls.results = run_suite(TINY, "smoke")

    def test_cold_bulk_ran_every_method_within_limits(self):
        runs = self.results["cold_bulk"]["runs"]
        self.assertEqual(sorted(r["method"] for r in runs), sorted(("agent",) + PEERS))
        for run in runs:
            self.assertNotIn("error", run, run)
            self.assertEqual((run["pacing_violations"], run["line_limit_errors"], run["dropped"]), (0, 0, False))
            self.assertEqual(run["requests_by_type"].get("reqMktData"), 6, run)
            self.assertGreater(run["completeness"], 0.5, run)
        side = {r["peer"] for r in self.results["cold_bulk"]["side_by_side"]}
        self.assertEqual(side, set(PEERS))

    def test_scaling_has_a_row_per_size(self):
        rows = self.results["scaling"]
        self.assertEqual([r["count"] for r in rows], [6, 12])
        for row in rows:
            self.assertEqual(row["failed"], 0)
            self.assertGreater(row["peak_rss_mb"], 0)

    def test_agent_process_figures(self):
        foot = self.results["footprint"]
        self.assertEqual(len(foot["ready_s"]), 1)
        for key in ("rss_idle_mb", "cpu_idle_pct", "rss_after_batch_mb", "ready_median_s"):
            self.assertIsInstance(foot[key], float, key)
        self.assertEqual(foot["batch_complete"], 6)
        relay = self.results["relay_overhead"]
        self.assertEqual(relay["concurrent_requests"], 16)
        self.assertLessEqual(relay["median_ms"], relay["p99_ms"])
        warm = self.results["warm_refresh"]
        self.assertEqual([w["repeats"] for w in warm], [2, 2])
        self.assertEqual(warm[0]["new_reqMktData"], 0)  # 4 contracts + 1 underlying fit in the default
        self.assertEqual(warm[1]["new_reqMktData"], 2 * 2)  # ... not in 3 warm lines: 2 streams per refresh

    @unittest.skipUnless(SWEEP_PEERS, "ib_async needs Python 3.10+")
    def test_snapshot_sweep_runs_each_duration(self):
        rows = self.results["snapshot_sweep"]
        self.assertEqual(
            sorted((r["snapshot_ms"], r["method"]) for r in rows), [(0, "ib_async_chunked"), (300, "ib_async_chunked")]
        )
        for row in rows:
            self.assertEqual((row["failed"], row["line_limit_errors"], row["completeness"]), (0, 0, 1.0), row)
        slow = next(r for r in rows if r["snapshot_ms"] == 300)
        self.assertGreaterEqual(slow["wall_s"], 0.3)  # reqTickers waits for every tickSnapshotEnd

    def test_listed_spy_options_and_the_peers_on_the_same_work(self):
        agent = self.results["listed"]["agent"]
        self.assertNotIn("error", agent)
        self.assertGreaterEqual(agent["options"], 4)
        self.assertEqual(agent["with_con_id"], agent["options"])
        self.assertEqual((agent["pacing_violations"], agent["line_limit_errors"]), (0, 0))
        self.assertEqual(agent["errors_sent"].get("200", 0), 0)
        self.assertLessEqual(agent["reqMktData"], agent["options"] + 1)
        self.assertEqual(agent["listing_requests"], 1 + agent["expirations"])
        peers = self.results["listed"]["peers"]
        self.assertEqual([p["method"] for p in peers], ["readme"] + list(SWEEP_PEERS))
        grid = next(p for p in peers if p["method"] == "readme")
        self.assertEqual(grid["pool"], "spy-grid")
        self.assertGreaterEqual(grid["contracts"], agent["options"])
        self.assertTrue(all(p["peer_over_agent"] for p in peers), peers)
        chain = self.results["listed_chain"]
        self.assertEqual(chain["errors_200"], 0)
        self.assertLessEqual(chain["requests_over_options"], 3)

    def test_table_and_json(self):
        text = report.render(self.results)
        for title in (
            "Cold bulk quotes",
            "Scaling",
            "Warm refresh",
            "Relay overhead",
            "Footprint",
            "Targets",
            "Listed SPY options",
            "The same work by the peers",
            "fetch-chain",
        ) + (("Snapshot peers",) if SWEEP_PEERS else ()):
            self.assertIn(title, text)
        names = [t["name"] for t in self.results["targets"]]
        self.assertTrue(any(n.startswith("cold 6:") for n in names), names)
        self.assertIn("relay status round trip: p99", names)
        json.loads(json.dumps(self.results))


class BenchCommandTest(unittest.TestCase):
    def test_command_line_writes_json(self):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "figures.json"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.run",
                    "--sections",
                    "scaling",
                    "--scaling-sizes",
                    "5",
                    "--json",
                    str(path),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
            )
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            self.assertIn("Scaling", done.stdout)
            figures = json.loads(path.read_text(encoding="utf-8"))
        self.assertEqual([r["count"] for r in figures["scaling"]], [5])
        self.assertEqual(figures["mode"], "full")

    def test_contracts_past_the_listed_options_are_exchange_routed(self):
        contracts = option_contracts(3500)
        self.assertEqual(len({(c.ticker, c.expiration, c.strike, c.right, c.exchange) for c in contracts}), 3500)
        self.assertEqual(contracts[0].exchange, "SMART")
        self.assertNotEqual(contracts[-1].exchange, "SMART")


if __name__ == "__main__":
    unittest.main()
