"""Static checks of start_windows.bat and start_windows.ps1, which cannot run here: line endings and
encoding, Windows PowerShell 5.1 syntax only, cmd's block quoting, the Python version probe, and
agreement with start_unix.sh and the README: the same Python floor, the same stamp lines, the same steps
in the same order for a half-made environment, the same messages. (Their pip command is run in
test_release; start_unix.sh itself runs for real in test_start_scripts.)"""

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
UNIX = (ROOT / "start_unix.sh").read_text()


def powershell_code(text: str) -> str:
    """The script with comments removed and every string literal emptied ('' or "")."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c == "'":
            i += 1
            while not (text[i] == "'" and text[i + 1 : i + 2] != "'"):
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
        for match in re.finditer(r"Join-Path((?:[ \t]+[^\s)|;}]+)+)", self.code):
            self.assertEqual(
                len(match.group(1).split()), 2, f"Join-Path with 3+ parts needs PowerShell 7: {match.group(0)}"
            )
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

    def test_version_probe_accepts_3_10_and_refuses_3_9(self):
        probe = re.search(r"^\s*\$probe = '([^']*)'", self.text, re.MULTILINE).group(1)
        result = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout.strip()), (0, sys.executable))
        body = probe.replace("import sys; ", "", 1)
        for version, refused in (((3, 9, 18), True), ((3, 10, 0), False), ((3, 13, 1), False)):
            fake_sys = types.SimpleNamespace(version_info=version, executable="python.exe", exit=sys.exit)
            with self.subTest(version), unittest.mock.patch("builtins.print"):
                if refused:
                    with self.assertRaises(SystemExit) as exited:
                        exec(body, {"sys": fake_sys})
                    self.assertEqual(exited.exception.code, 1)
                else:
                    exec(body, {"sys": fake_sys})

    def test_floor_check_is_the_one_start_unix_uses(self):
        floor = re.search(r"^\$FloorCheck = '([^']*)'", self.text, re.MULTILINE).group(1)
        unix = re.search(r"^PYTHON_FLOOR_CHECK='([^']*)'", UNIX, re.MULTILINE).group(1)
        self.assertEqual(floor, unix)
        for version, code in (((3, 9, 18), 1), ((3, 10, 0), 0), ((3, 12, 4), 0)):
            with self.subTest(version), self.assertRaises(SystemExit) as exited:
                exec(
                    floor.replace("import sys; ", "", 1),
                    {"sys": types.SimpleNamespace(version_info=version, exit=sys.exit)},
                )
            self.assertEqual(exited.exception.code, code)
        self.assertNotRegex(self.text, r"3\.9\b")
        from agent import doctor as agent_doctor

        self.assertIn(f"(3, {agent_doctor.MIN_PYTHON[1]})", floor)

    def test_tries_the_bundled_python_then_py_3_then_python(self):
        order = [
            self.text.index(s)
            for s in ("'python_bundle\\python.exe'", "-Command 'py' -Flags '-3'", "-Command 'python'")
        ]
        self.assertEqual(order, sorted(order))

    def test_same_environment_and_stamp_as_start_unix(self):
        unix = (ROOT / "start_unix.sh").read_text()
        for name in (".venv", ".requirements.sha256", "requirements.txt", "ib_data_agent.py"):
            self.assertIn(f"'{name}'", self.text)
            self.assertIn(name, unix)
        self.assertIn("'Scripts\\python.exe'", self.text)
        self.assertTrue(self.text.rstrip().endswith("exit $LASTEXITCODE"))
        self.assertIn("@args", self.code)

    def test_stamp_lines_are_the_ones_start_unix_writes(self):
        """ "sha256  name" per file read through -r/-c, lower-case hex, '/' in names, the same include pattern."""
        ps1 = re.search(r"^\s*\$Include = '([^']*)'", self.text, re.MULTILINE).group(1)
        unix = re.search(r"^include = re\.compile\(r'([^']*)'\)", UNIX, re.MULTILINE).group(1)
        self.assertEqual(ps1, unix)
        include = re.compile(unix)
        for line, included in (
            ("-r requirements.txt", "requirements.txt"),
            ("  --requirement=a b.txt", "a"),
            ("-c constraints.txt # pins", "constraints.txt"),
            ("-rother.txt", "other.txt"),
            ("--constraint  c.txt", "c.txt"),
            ("aiohttp==3.12.15", None),
            ("# -r not.txt", None),
            ("--config-settings x", None),
            ("-e .", None),
        ):
            with self.subTest(line):
                match = include.match(line)
                self.assertEqual(match.group(1) if match else None, included)
        self.assertIn("$Line -cmatch $Include", self.code, "case-sensitive, as Python's re")
        self.assertIn("-Algorithm SHA256).Hash.ToLower()", self.code)
        self.assertIn("$Lines += $Hash + '' + $Name.Replace('', '')", self.code)
        self.assertIn("$Hash + '  ' + $Name.Replace('\\', '/')", self.text)
        self.assertIn('hexdigest() + "  " + name', UNIX)
        self.assertIn("Set-Content -LiteralPath $Stamp -Value $Wanted", self.code)
        self.assertIn("$Have -cnotcontains $Line", self.code, "every wanted line in the stamp, as stamp_covers")

    def test_steps_mirror_ensure_venv_in_start_unix(self):
        """Each step of start_unix.sh's ensure_venv, build_venv and install_requirements, in the same
        order here: (start_unix.sh text, start_windows.ps1 text) per step."""
        main_steps = [
            ('[ ! -e "$venv" ]', "if ($FirstRun)"),  # first run: build
            ("Setting up Python environment in", "Setting up Python environment in"),
            ('"$venv/bin/python" -c "$PYTHON_FLOOR_CHECK"', "(Test-Python $Python)"),  # python starts, 3.10+
            ("its python does not start or is older than 3.10", "its python does not start or is older than 3.10"),
            ('stamp_covers "$venv/$STAMP_NAME" "$wanted"', "Test-StampCovers $Stamp $Wanted"),  # nothing to do
            ('"$venv/bin/python" -m pip --version', "(Test-Pip)"),
            ("it has no pip", "it has no pip"),
            ('[ ! -f "$venv/$STAMP_NAME" ]', "(Test-Path -LiteralPath $Stamp)"),
            ("an earlier install did not finish", "an earlier install did not finish"),
            ("Installing dependencies from", "Installing dependencies from"),  # another set: in place
            ('install_requirements "$venv"', "$Problem = Install-Requirements"),
            ("is not usable ($VENV_PROBLEM): rebuilding it once...", "is not usable ($Problem): rebuilding it once..."),
            ('build_venv "$python" "$venv" "$requirements" "$wanted" && return 0', "$Problem = New-Environment"),
            ('fix_by_hand "$python" "$venv"', "Write-FixByHand $Problem"),
        ]
        build_steps = [
            ('rm -rf "$2"', "Remove-Item -LiteralPath $Target -Recurse"),
            ('"$1" -m venv "$2"', "& $Base -m venv $EnvDir"),
            ('VENV_PROBLEM="creating it with $1 failed"', '"creating it with $Base failed"'),
            ('"$2/bin/python" -m pip --version', "(Test-Pip)"),
            ('VENV_PROBLEM="$1 made it without pip"', '"$Base made it without pip"'),
            ('install_requirements "$2" "$3" "$4"', "return Install-Requirements"),
            ('rm -f "$1/$STAMP_NAME"', "Remove-Item -LiteralPath $Stamp"),
            ("-m pip install", "& $Python @Pip @PipArgs"),
            (
                'VENV_PROBLEM="installing $(basename "$2") failed"',
                "'installing ' + (Split-Path -Leaf $Requirements) + ' failed'",
            ),
            ('printf \'%s\\n\' "$3" > "$1/$STAMP_NAME"', "Set-Content -LiteralPath $Stamp -Value $Wanted"),
        ]
        unix_main = UNIX[UNIX.index("ensure_venv() {") : UNIX.index("main() {")]
        ps1_main = self.text[self.text.index("$Ready = $false") :]
        unix_build = UNIX[UNIX.index("install_requirements() {") : UNIX.index("fix_by_hand() {")]
        ps1_build = self.text[
            self.text.index("function Install-Requirements") : self.text.index("function Write-FixByHand")
        ]
        ps1_build = (
            ps1_build[ps1_build.index("function New-Environment") :]
            + ps1_build[: ps1_build.index("function New-Environment")]
        )
        unix_build = unix_build[unix_build.index("build_venv() {") :] + unix_build[: unix_build.index("build_venv() {")]
        for steps, unix, ps1 in ((main_steps, unix_main, ps1_main), (build_steps, unix_build, ps1_build)):
            for side, text, column in (("start_unix.sh", unix, 0), ("start_windows.ps1", ps1, 1)):
                with self.subTest(side, first=steps[0][column]):
                    start = 0
                    for step in steps:
                        found = text.find(step[column], start)
                        self.assertGreaterEqual(found, 0, f"{step[column]!r}: missing, or before the step above it")
                        start = found

    def test_fix_by_hand_is_one_command_for_a_command_prompt(self):
        fix = self.text[self.text.index("function Write-FixByHand") :]
        self.assertIn("Setting up the Python environment in $EnvDir failed again ($Why).", fix)
        self.assertIn("Setting up the Python environment in $2 failed again ($VENV_PROBLEM).", UNIX)
        self.assertIn("To fix it by hand, run", fix)
        self.assertIn("To fix it by hand, run:", UNIX)
        self.assertIn(
            "Write-Host ('  rmdir /s /q \"' + $Target + '\" && \"' + (Join-Path $AgentDir 'start_windows.bat') + '\"')",
            fix,
        )
        self.assertIn("$Target = Join-Path $EnvDir 'Lib\\site-packages'", fix, "bundled: what pip installed")

    def test_functions_write_to_the_host_not_to_their_return_value(self):
        """A function's uncaptured output becomes its return value: the commands whose output is
        not wanted are piped to Out-Host or Out-Null, and List.Add returns nothing."""
        for call in ("& $Python @Pip @PipArgs", "& $Base -m venv $EnvDir"):
            self.assertIn(call + " | Out-Host", self.code)
        for call in ("& $Exe -c $FloorCheck 2>$null", "& $Python @Pip --version 2>$null"):
            self.assertIn(call + " | Out-Null", self.code)
        self.assertNotIn("ArrayList", self.code)
        self.assertIn("$null = Get-SystemPython", self.code)

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
