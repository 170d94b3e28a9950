"""A tiny run of bench.streamed (time to the first partial frame of a chain), so the benchmark cannot
rot. No timings are asserted: only that it ran within TWS's limits and reported its figures."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import unittest
from pathlib import Path

from bench import streamed


class StreamedBenchSmokeTest(unittest.TestCase):
    def test_a_small_chain_reports_each_partial_and_the_response(self):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "streamed.json"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                self.assertEqual(
                    streamed.main(["--max-days", "5", "--strikes-around", "1", "--plain", "--json", str(out)]), 0
                )
            result = json.loads(out.read_text(encoding="utf-8"))
        self.assertIn("first partial", printed.getvalue())
        self.assertGreater(result["expirations"], 1)
        self.assertEqual((result["partials"], len(result["partial_s"])), (result["expirations"],) * 2)
        self.assertTrue(result["partials_cover_response"])
        self.assertEqual(sum(result["options_per_expiration"]), result["options"])
        self.assertEqual(result["first_partial_options"], result["options_per_expiration"][0])
        for key in ("first_partial_s", "response_s", "floor_s"):
            self.assertIsInstance(result[key], float, key)
        self.assertEqual(result["partial_s"], sorted(result["partial_s"]))
        self.assertEqual((result["pacing_violations"], result["line_limit_errors"]), (0, 0))
        plain = result["without_partial"]
        self.assertEqual((plain["partials"], plain["options"]), (0, result["options"]))
        self.assertIn("without partial", printed.getvalue())


if __name__ == "__main__":
    unittest.main()
