"""`python -m tests [pattern...]`: run the suite (or the test modules matching a pattern) and end
with the line `N passed, N failed[, N skipped]`."""
import sys
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CountingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def main(argv):
    patterns = [a for a in argv if not a.startswith("-")]
    verbosity = 2 if "-v" in argv else 1
    loader = unittest.TestLoader()
    if patterns:
        suite = unittest.TestSuite(
            loader.discover(str(ROOT / "tests"), pattern=f"test*{p}*.py", top_level_dir=str(ROOT))
            for p in patterns)
    else:
        suite = loader.discover(str(ROOT / "tests"), top_level_dir=str(ROOT))
    runner = unittest.TextTestRunner(resultclass=CountingResult, verbosity=verbosity, stream=sys.stdout)
    started = time.monotonic()
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
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
