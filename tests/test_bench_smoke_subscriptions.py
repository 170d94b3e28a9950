"""A tiny run of bench.subscriptions (its own section of docs/BENCHMARKS.md), so it cannot rot. No
timings are asserted: only that each scenario ran, got updates and cost TWS no message."""

from __future__ import annotations

import unittest

from bench import subscriptions

TINY = ((4, (), 250), (0, ("MSFT",), 250))
SECONDS = 1.5


class SubscriptionsBenchSmokeTest(unittest.TestCase):
    def test_every_scenario_reports_its_figures(self):
        rows, baseline = subscriptions.run(SECONDS, TINY)
        self.assertEqual([(r["options"], r["underlyings"]) for r in rows], [(4, 1), (0, 1)])
        for row in rows:
            self.assertGreater(row["updates_per_s"], 0, row)
            self.assertIsNotNone(row["latency_median_ms"], row)
            self.assertEqual((row["tws_messages"], row["seq_gaps"]), (0, 0), row)
        self.assertEqual(baseline["options"], 4)
        self.assertIn("| latency median ms |", subscriptions.table(rows))


if __name__ == "__main__":
    unittest.main()
