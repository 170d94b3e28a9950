"""Static checks of start_windows.bat and start_windows.ps1, which cannot run here: line endings and
encoding, Windows PowerShell 5.1 syntax only, cmd's block quoting, the Python version probe, and
agreement with start_unix.sh and the README. (Their pip command is run in test_release.)"""
from __future__ import annotations

import re
import subprocess
import sys
import types
import unittest
import unittest.mock
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAT = ROOT / "start_windows.bat"
PS1 = ROOT / "start_windows.ps1"


def powershell_code(text: str) -> str:
    """The script with comments removed and every string literal emptied ('' or "")."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c == "'":
            i += 1
            while not (text[i] == "'" and text[i + 1:i + 2] != "'"):
                i += 2 if text[i] == "'" else 1
            out.append("''")
            i += 1
        elif c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "`" else 1
            out.append('""')
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def write_host_lines(text: str) -> list:
    lines = []
    for single, double in re.findall(r"Write-Host (?:'((?:[^']|'')*)'|\"([^\"]*)\")", text):
        lines.append(single.replace("''", "'") if single else double)
    return lines


class LineEndingsTest(unittest.TestCase):
    def test_crlf_and_ascii(self):
        """cmd needs CRLF; Windows PowerShell 5.1 reads a file without BOM in the ANSI code page."""
        for path in (BAT, PS1):
            with self.subTest(path.name):
                data = path.read_bytes()
                data.decode("ascii")
                self.assertEqual(data.count(b"\n"), data.count(b"\r\n"))
                self.assertEqual(data.count(b"\r"), data.count(b"\r\n"))
                self.assertTrue(data.endswith(b"\r\n"))
                self.assertNotIn(b"\t", data)


class BatchLauncherTest(unittest.TestCase):
    lines = BAT.read_text().splitlines()

    def test_launches_the_powershell_script_next_to_it_with_all_arguments(self):
        launch = [line for line in self.lines if "powershell.exe" in line.lower()]
        self.assertEqual(len(launch), 1)
        self.assertIn('-NoProfile -ExecutionPolicy Bypass -File "%~dp0start_windows.ps1" %*', launch[0])
        self.assertTrue(launch[0].rstrip().endswith("%*"), "-File takes everything after it")
        self.assertTrue(PS1.is_file())

    def test_pauses_only_on_an_error_and_passes_the_exit_code_on(self):
        self.assertEqual(self.lines[0], "@echo off")
        launch = next(i for i, line in enumerate(self.lines) if "powershell.exe" in line.lower())
        self.assertEqual(self.lines[launch + 1], 'set "AGENT_EXIT_CODE=%ERRORLEVEL%"')
        self.assertEqual(self.lines[launch + 2], 'if not "%AGENT_EXIT_CODE%"=="0" pause')
        self.assertEqual(self.lines[launch + 3], "exit /b %AGENT_EXIT_CODE%")
        self.assertIn("setlocal", self.lines[:launch], "the exit-code variable stays local")

    def test_blocks_are_closed_and_their_lines_do_not_close_them_early(self):
        depth = 0
        for line in self.lines:
            stripped = line.strip()
            if stripped == ")":
                depth -= 1
                continue
            if depth and re.search(r"(?<!\^)\)", stripped):
                self.fail(f"an unescaped ')' inside a ( ) block ends it early: {line}")
            if stripped.endswith("("):
                depth += 1
            self.assertGreaterEqual(depth, 0)
        self.assertEqual(depth, 0)


class PowerShellScriptTest(unittest.TestCase):
    text = PS1.read_text()
    code = powershell_code(text)

    def test_windows_powershell_5_1_syntax_only(self):
        for token in ("&&", "||", "??", "?.", "?[", " ? "):
            self.assertNotIn(token, self.code, f"{token!r} needs PowerShell 7")
        for match in re.finditer(r"Join-Path((?:[ \t]+[^\s)|;]+)+)", self.code):
            self.assertEqual(len(match.group(1).split()), 2, f"Join-Path with 3+ parts needs PowerShell 7: {match.group(0)}")
        self.assertNotIn("<#", self.text)

    def test_brackets_balance(self):
        pairs = {")": "(", "}": "{", "]": "["}
        stack = []
        for c in self.code:
            if c in "({[":
                stack.append(c)
            elif c in pairs:
                self.assertTrue(stack and stack.pop() == pairs[c], f"unbalanced {c!r}")
        self.assertEqual(stack, [])

    def test_file_cmdlets_take_literal_paths(self):
        """-Path would read [ ] in a folder name as a wildcard."""
        for cmdlet in ("Test-Path", "Get-Content", "Set-Content", "Remove-Item", "Get-FileHash", "Get-ChildItem"):
            calls = re.findall(rf"{cmdlet}\s+(\S+)", self.code)
            self.assertTrue(calls, cmdlet)
            self.assertEqual(set(calls), {"-LiteralPath"}, cmdlet)

    def test_version_probe_accepts_3_9_and_refuses_3_8(self):
        probe = re.search(r"^\s*\$probe = '([^']*)'", self.text, re.MULTILINE).group(1)
        result = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout.strip()), (0, sys.executable))
        body = probe.replace("import sys; ", "", 1)
        for version, refused in (((3, 8, 10), True), ((3, 9, 0), False)):
            fake_sys = types.SimpleNamespace(version_info=version, executable="python.exe", exit=sys.exit)
            with self.subTest(version), unittest.mock.patch("builtins.print"):
                if refused:
                    with self.assertRaises(SystemExit) as exited:
                        exec(body, {"sys": fake_sys})
                    self.assertEqual(exited.exception.code, 1)
                else:
                    exec(body, {"sys": fake_sys})

    def test_tries_the_bundled_python_then_py_3_then_python(self):
        order = [self.text.index(s) for s in ("'python_bundle\\python.exe'", "-Command 'py' -Flags '-3'",
                                               "-Command 'python'")]
        self.assertEqual(order, sorted(order))

    def test_same_environment_and_stamp_as_start_unix(self):
        unix = (ROOT / "start_unix.sh").read_text()
        for name in (".venv", ".requirements.sha256", "requirements.txt", "ib_data_agent.py"):
            self.assertIn(f"'{name}'", self.text)
            self.assertIn(name, unix)
        self.assertIn("'Scripts\\python.exe'", self.text)
        self.assertTrue(self.text.rstrip().endswith("exit $LASTEXITCODE"))
        self.assertIn("@args", self.code)

    def test_python_not_found_gives_the_readme_guidance(self):
        readme = (ROOT / "README.md").read_text()
        section = readme.split('### "Python not found" (Windows)', 1)[1].split("\n### ", 1)[0]
        steps = [step.replace("**", "") for step in re.findall(r"^\d+\. (.+)$", section, re.MULTILINE)]
        self.assertGreaterEqual(len(steps), 6)
        shown = "\n".join(write_host_lines(self.text))
        for step in steps:
            self.assertIn(step, shown)


if __name__ == "__main__":
    unittest.main()
