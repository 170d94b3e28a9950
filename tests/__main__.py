"""`python -m tests [--fast] [--durations N] [pattern...]`: run the suite (or the test modules
matching a pattern) and end with the line `N passed, N failed[, N skipped]`.

--fast: the fast tier for the edit loop (under 30 s): unit tests and the quick integration tests,
the TWS suites at the newest version only. The modules and classes it leaves out are FULL_ONLY.
--durations N: print the N slowest test classes (where the suite's wall time goes).
"""
import os
import re
import sys
import time
import unittest
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the fast tier leaves out: modules (test_x) and classes (test_x.Class) that wait on real time
# (pacing at 45 msg/s, timeouts, reconnects, processes, venvs). `--durations` shows the figures.
FULL_ONLY = frozenset({
    "test_start_scripts", "test_release", "test_reliability_relay", "test_reliability_tws",
    "test_reliability_orders", "test_reliability_input", "test_reliability_secrets", "test_reliability_config",
    "test_bench_smoke", "test_agent_e2e", "test_agent_demo", "test_relay_frames",
    "test_ib_scanner_tws.BulkTest", "test_ib_scanner_tws.DropTest",
    "test_market_data.StallTest", "test_market_data.LinePoolTest",
})


class CountingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0
        self.seconds = defaultdict(float)   # test class -> wall time
        self._started = 0.0

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.seconds[f"{type(test).__module__}.{type(test).__qualname__}"] += time.monotonic() - self._started

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def _tier_names(test) -> tuple:
    """(module, module.Class) of a test; a per-version class (tests.tws_versions) by its base name."""
    module = type(test).__module__.rpartition(".")[2]
    return module, f"{module}.{re.sub(r'_v[0-9]+$', '', type(test).__qualname__)}"


def fast_tier(suite: unittest.TestSuite) -> unittest.TestSuite:
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            kept.addTest(fast_tier(item))
        elif not FULL_ONLY.intersection(_tier_names(item)):
            kept.addTest(item)
    return kept


def main(argv):
    fast = "--fast" in argv
    durations = 0
    if "--durations" in argv:
        at = argv.index("--durations")
        durations = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    patterns = [a for a in argv if not a.startswith("-")]
    verbosity = 2 if "-v" in argv else 1
    if fast:
        from ib_connection import TESTED_MAX_SERVER_VERSION
        os.environ.setdefault("TWS_VERSIONS", str(TESTED_MAX_SERVER_VERSION))
    loader = unittest.TestLoader()
    if patterns:
        suite = unittest.TestSuite(
            loader.discover(str(ROOT / "tests"), pattern=f"test*{p}*.py", top_level_dir=str(ROOT))
            for p in patterns)
    else:
        suite = loader.discover(str(ROOT / "tests"), top_level_dir=str(ROOT))
    if fast:
        suite = fast_tier(suite)
    runner = unittest.TextTestRunner(resultclass=CountingResult, verbosity=verbosity, stream=sys.stdout)
    started = time.monotonic()
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    for name, seconds in sorted(result.seconds.items(), key=lambda item: -item[1])[:durations]:
        print(f"{seconds:7.1f} s  {name}")
    print(f"suite took {time.monotonic() - started:.1f} s")
    line = f"{result.passed} passed, {failed} failed"
    if result.skipped:
        line += f", {len(result.skipped)} skipped"
    print(line)
    if result.testsRun == 0:
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
