"""`python -m tests [--fast] [--jobs N] [--durations N] [pattern...]`: run the suite (or the test
modules matching a pattern) and end with the line `N passed, N failed[, N skipped]`.

--fast: the fast tier for the edit loop (under 30 s): unit tests and the quick integration tests,
the TWS suites at the newest version only. The modules and classes it leaves out are FULL_ONLY.
--durations N: print the N slowest test classes (where the suite's wall time goes).
--jobs N: run the test modules in N processes at once (most of the suite waits on pacing, timeouts
and reconnects, not on the CPU); each process's output is printed whole when it ends. The whole
suite runs in WHOLE_SUITE_JOBS processes by default; with patterns, one.
"""

import os
import re
import subprocess
import sys
import time
import unittest
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the fast tier leaves out: modules (test_x) and classes (test_x.Class) that wait on real time
# (pacing at 45 msg/s, timeouts, reconnects, processes, venvs). `--durations` shows the figures.
FULL_ONLY = frozenset(
    {
        # processes, venvs, long batches and fault runs
        "test_start_scripts",
        "test_release",
        "test_reliability_relay",
        "test_reliability_tws",
        "test_reliability_orders",
        "test_reliability_input",
        "test_reliability_secrets",
        "test_reliability_config",
        "test_bench_smoke",
        "test_bench_smoke_subscriptions",
        "test_bench_streamed",
        "test_chain_partial.StreamedChainE2ETest",
        "test_orders_portfolio.PositionsPnlOnFakeTwsTest",
        "test_agent_e2e",
        "test_subscriptions_e2e",
        "test_agent_demo",
        "test_relay_frames",
        "test_console",
        "test_agent_doctor",
        # suites against a running fake TWS: the fast tier keeps EveryOfferedVersion (orders, prices and
        # account reads end to end at the newest version) and the chain test as their witnesses
        "test_fake_tws_ibapi",
        "test_fake_tws_ibapi_orders",
        "test_fake_tws_ib_async",
        "test_orders_tws",
        "test_orders_e2e",
        "test_order_events_e2e",
        "test_orders_fake_tws",
        "test_orders_tws_unexpected",
        "test_chains_tws",
        "test_market_data",
        "test_ib_scanner_tws.BulkTest",
        "test_ib_scanner_tws.DropTest",
        "test_ib_scanner_tws.WarmTest",
        "test_ib_scanner_tws.DelayedTest",
        "test_ib_connection_fake_tws.ConnectAndCall",
        "test_ib_connection_fake_tws.Heartbeat",
        "test_ib_connection_fake_tws.DropsAndRestarts",
        "test_ib_connection_fake_tws.PortsAndModes",
        "test_relay_link.Reconnect",
        "test_relay_link.Certificates",
    }
)


# Rough seconds per module (from `--durations`), to balance --jobs; unnamed modules count DEFAULT_SECONDS.
MODULE_SECONDS = {
    "test_start_scripts": 110,
    "test_ib_scanner_tws": 70,
    "test_reliability_orders": 55,
    "test_reliability_tws": 55,
    "test_market_data": 45,
    "test_bench_smoke": 35,
    "test_agent_e2e": 30,
    "test_reliability_input": 30,
    "test_reliability_relay": 28,
    "test_orders_tws": 25,
    "test_release": 20,
    "test_orders_e2e": 20,
    "test_order_events_e2e": 15,
    "test_subscriptions_e2e": 20,
    "test_bench_smoke_subscriptions": 10,
    "test_subscriptions": 5,
    "test_chains_tws": 20,
    "test_agent_doctor": 15,
    "test_relay_link": 15,
    "test_ib_connection_fake_tws": 14,
    "test_ib_connection": 2,
    "test_fake_tws_ibapi": 12,
    "test_fake_tws_ibapi_orders": 4,
    "test_relay_frames": 10,
}
DEFAULT_SECONDS = 3
# The same for the fast tier (what is left of each module there); unnamed modules count 1.
FAST_MODULE_SECONDS = {
    "test_subscriptions": 5,
    "test_orders_portfolio": 3,
    "test_agent_config": 3,
    "test_ib_connection": 2,
    "test_ib_connection_fake_tws": 2,
    "test_relay_link": 5,
    "test_ib_orders": 2,
    "test_ib_orders_account": 2,
    "test_fake_tws_wire": 3,
    "test_fake_tws_cli": 3,
    "test_ib_scanner_tws": 3,
    "test_fake_tws_market": 3,
    "test_fake_relay": 3,
    "test_protocol_versions": 2,
}
WHOLE_SUITE_JOBS = 4  # the whole suite (no pattern) runs in 4 processes: it mostly waits (2 vCPUs: 261 s vs 398 s)
LAST_LINE = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$", re.M)


class CountingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0
        self.seconds = defaultdict(float)  # test class -> wall time
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


def _option(argv, name: str, default: int):
    """(value of `name N`, argv without it)."""
    if name not in argv:
        return default, argv
    at = argv.index(name)
    return int(argv[at + 1]), argv[:at] + argv[at + 2 :]


def _modules(patterns, fast: bool) -> list:
    found = sorted(path.stem for path in (ROOT / "tests").glob("test*.py"))
    return [m for m in found if (not patterns or any(p in m for p in patterns)) and not (fast and m in FULL_ONLY)]


def run_in_processes(jobs: int, patterns, flags) -> int:
    """The modules split over `jobs` processes, the slowest first to the least loaded."""
    fast = "--fast" in flags
    weight = (lambda m: FAST_MODULE_SECONDS.get(m, 1)) if fast else (lambda m: MODULE_SECONDS.get(m, DEFAULT_SECONDS))
    buckets = [[0.0, []] for _ in range(jobs)]
    for module in sorted(_modules(patterns, fast), key=lambda m: -weight(m)):
        bucket = min(buckets, key=lambda b: b[0])
        bucket[0] += weight(module)
        bucket[1].append(module)
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests", "--exact", *flags, *names],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _, names in buckets
        if names
    ]
    totals, broken = [0, 0, 0], 0
    for worker in workers:
        output = worker.communicate()[0].decode("utf-8", "replace")
        sys.stdout.write(output)
        counts = LAST_LINE.findall(output)
        if worker.returncode not in (0, 1) or not counts:
            broken += 1
            print(f"a test process ended with code {worker.returncode} before its last line")
            continue
        for i, value in enumerate(counts[-1]):
            totals[i] += int(value or 0)
    print(f"suite took {time.monotonic() - started:.1f} s in {len(workers)} processes")
    line = f"{totals[0]} passed, {totals[1] + broken} failed"
    if totals[2]:
        line += f", {totals[2]} skipped"
    print(line)
    return 1 if totals[1] or broken or not totals[0] else 0


def main(argv):
    fast = "--fast" in argv
    exact = "--exact" in argv  # patterns are whole module names (the --jobs workers)
    durations, argv = _option(argv, "--durations", 0)
    jobs, argv = _option(argv, "--jobs", 0)
    patterns = [a for a in argv if not a.startswith("-")]
    jobs = jobs or (1 if patterns or exact else WHOLE_SUITE_JOBS)
    if jobs > 1:
        flags = ["--fast"] if fast else []
        return run_in_processes(jobs, patterns, flags + (["--durations", str(durations)] if durations else []))
    verbosity = 2 if "-v" in argv else 1
    if fast:
        from agent.ib.session import TESTED_MAX_SERVER_VERSION

        os.environ.setdefault("TWS_VERSIONS", str(TESTED_MAX_SERVER_VERSION))
    loader = unittest.TestLoader()
    if patterns:
        suite = unittest.TestSuite(
            loader.discover(
                str(ROOT / "tests"), pattern=f"{p}.py" if exact else f"test*{p}*.py", top_level_dir=str(ROOT)
            )
            for p in patterns
        )
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
