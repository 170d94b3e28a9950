"""ruff over the whole project: lint (ruff.toml's rules) and format, in every suite run and the fast tier."""

import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True)


class Ruff(unittest.TestCase):
    def test_lint_finds_nothing(self):
        result = ruff("check", "--no-cache", "--output-format", "concise")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_every_file_is_formatted(self):
        result = ruff("format", "--check", "--no-cache")
        self.assertEqual(
            result.returncode, 0, "run `.venv-dev/bin/python -m ruff format .`\n" + result.stdout + result.stderr
        )


if __name__ == "__main__":
    unittest.main()
