"""start_unix.sh and run_tests.sh run for real in a temporary copy: the first start, a half-made
environment (a venv made without pip, one whose python does not start, an install that did not
finish), a stamp from another requirements set, switching --demo on and off, an install that fails
twice (then the one command that fixes it by hand, which works), a Debian Python without its venv
package, and a Python older than 3.10 (also through CI's .ci/run).

Nothing reaches the network: the copy gets tiny requirements files pinning tiny wheels this test
writes into a local folder, pip is told to use only that folder, and PATH holds only the Python this
test chooses and the few commands the scripts need. The copy's ib_data_agent.py (and tests/ for
run_tests.sh) is a stand-in that imports the tiny packages and says it ran."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
VENV_PACKAGE = "python%d.%d-venv" % sys.version_info[:2]
COMMANDS = ("bash", "dirname", "uname", "rm", "grep", "basename", "cat", "env")
STAMP = ".requirements.sha256"

STAND_IN_AGENT = """\
import sys
import tinyagent
if "--demo" in sys.argv:
    import tinydemo
print(" ".join(["AGENT RAN", tinyagent.VERSION, sys.prefix] + sys.argv[1:]))
"""
STAND_IN_TESTS = """\
import sys
import tinyagent
import tinydemo
import tinydev
print(" ".join(["TESTS RAN", sys.prefix] + sys.argv[1:]))
"""
# A Debian/Ubuntu Python without python3-venv: `-m venv` leaves a venv without pip and fails.
DEBIAN_PYTHON = """\
#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    shift 2
    "{real}" -m venv --without-pip "$@"
    echo "The virtual environment was not created successfully because ensurepip is not available."
    exit 1
fi
if [ "$1" = "-c" ] && [ "$2" = "import ensurepip" ]; then
    echo "ModuleNotFoundError: No module named 'ensurepip'" >&2
    exit 1
fi
exec "{real}" "$@"
"""
OLD_PYTHON = """\
#!/bin/bash
if [ "$1" = "--version" ]; then echo "Python 3.9.18"; exit 0; fi
exit 1
"""


def write_wheel(folder: Path, name: str, version: str) -> None:
    """A pure-Python wheel holding one module `name` with VERSION = version."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f'VERSION = "{version}"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_start_scripts\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


def sha256_line(path: Path, name: str) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() + "  " + name


class StartScriptCase(unittest.TestCase):
    """A fresh copy of the scripts per test (in a folder whose name has a space, as on many Macs),
    with its own wheel folder and its own PATH."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="start scripts "))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.copy = self.tmp / "agent copy"
        (self.copy / "tests").mkdir(parents=True)
        (self.copy / ".ci").mkdir()
        for name in ("start_unix.sh", "run_tests.sh", ".ci/run"):
            shutil.copy2(ROOT / name, self.copy / name)
        (self.copy / "ib_data_agent.py").write_text(STAND_IN_AGENT)
        (self.copy / "tests" / "__init__.py").write_text("")
        (self.copy / "tests" / "__main__.py").write_text(STAND_IN_TESTS)
        self.write_requirements(agent="1.0")
        # outside the folder with a space: PIP_FIND_LINKS is split at spaces
        self.wheels = Path(tempfile.mkdtemp(prefix="start-scripts-wheels-"))
        self.addCleanup(shutil.rmtree, self.wheels, True)
        for name in ("tinyagent", "tinydemo", "tinydev"):
            write_wheel(self.wheels, name, "1.0")
        self.bin = self.tmp / "bin"
        self.bin.mkdir()
        for command in COMMANDS:
            found = shutil.which(command)
            self.assertTrue(found, command)
            (self.bin / command).symlink_to(found)
        self.use_python(REAL_PYTHON)
        self.elsewhere = self.tmp / "elsewhere"  # the scripts are started from another folder
        self.elsewhere.mkdir()

    def write_requirements(self, agent: str) -> None:
        """The real files' shape: dev pulls in demo, demo pulls in the normal set."""
        (self.copy / "requirements.txt").write_text(f"# runtime\ntinyagent=={agent}\n")
        (self.copy / "requirements-demo.txt").write_text("-r requirements.txt\ntinydemo==1.0\n")
        (self.copy / "requirements-dev.txt").write_text("-r requirements-demo.txt\ntinydev==1.0\n")

    def use_python(self, target: str, script: str = "") -> None:
        """python3 on PATH: a link to target, or a script standing in for a Python."""
        python3 = self.bin / "python3"
        if python3.is_symlink() or python3.exists():
            python3.unlink()
        if script:
            python3.write_text(script.format(real=target))
            python3.chmod(0o755)
        else:
            python3.symlink_to(target)

    def env(self) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV")) and k not in ("PATH",)
        }
        env.update(
            PATH=str(self.bin),
            PIP_CONFIG_FILE=os.devnull,
            PIP_NO_INDEX="1",
            PIP_FIND_LINKS=str(self.wheels),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_CACHE_DIR="1",
        )
        return env

    def run_script(self, *args: str, script: str = "start_unix.sh") -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", str(self.copy / script), *args],
            cwd=self.elsewhere,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
        )
        result.output = result.stdout
        return result

    def assertRan(self, result, *args: str, version: str = "1.0", venv: str = ".venv"):
        self.assertEqual(result.returncode, 0, result.output)
        self.assertIn(f"AGENT RAN {version} {self.copy / venv} {' '.join(args)}".rstrip(), result.output)

    def stamp(self, venv: str = ".venv") -> list:
        return (self.copy / venv / STAMP).read_text().splitlines()

    def make_venv(self, *flags: str) -> Path:
        venv = self.copy / ".venv"
        subprocess.run(
            [REAL_PYTHON, "-m", "venv", *flags, str(venv)], check=True, timeout=120, stdout=subprocess.DEVNULL
        )
        return venv

    def rebuild_lines(self, output: str) -> list:
        return [line for line in output.splitlines() if "rebuilding" in line]


class FirstRunAndStamp(StartScriptCase):
    def test_first_run_installs_once_and_the_stamp_names_the_file(self):
        first = self.run_script("--check")
        self.assertRan(first, "--check")
        self.assertIn(f"Setting up Python environment in {self.copy / '.venv'} (first run only)...", first.output)
        self.assertEqual(self.rebuild_lines(first.output), [])
        self.assertEqual(self.stamp(), [sha256_line(self.copy / "requirements.txt", "requirements.txt")])

        again = self.run_script()
        self.assertRan(again)
        self.assertEqual(again.output.splitlines(), [f"AGENT RAN 1.0 {self.copy / '.venv'}"])

    def test_switching_demo_on_and_off_installs_only_the_first_time(self):
        self.assertRan(self.run_script())
        demo = self.run_script("--demo")
        self.assertRan(demo, "--demo")
        self.assertIn("Installing dependencies from requirements-demo.txt...", demo.output)
        self.assertEqual(self.rebuild_lines(demo.output), [])
        self.assertEqual(
            sorted(self.stamp()),
            sorted(
                [
                    sha256_line(self.copy / "requirements-demo.txt", "requirements-demo.txt"),
                    sha256_line(self.copy / "requirements.txt", "requirements.txt"),
                ]
            ),
        )
        for args in ((), ("--demo",), (), ("--demo",)):
            with self.subTest(args):
                result = self.run_script(*args)
                self.assertRan(result, *args)
                self.assertEqual(len(result.output.splitlines()), 1, result.output)

    def test_a_stamp_from_another_requirements_set_installs_in_place(self):
        self.assertRan(self.run_script())
        (self.copy / ".venv" / "kept").write_text("the venv is not rebuilt")
        write_wheel(self.wheels, "tinyagent", "2.0")
        self.write_requirements(agent="2.0")  # an update of the agent changes a pin
        result = self.run_script()
        self.assertRan(result, version="2.0")
        self.assertIn("Installing dependencies from requirements.txt...", result.output)
        self.assertEqual(self.rebuild_lines(result.output), [])
        self.assertTrue((self.copy / ".venv" / "kept").exists())
        self.assertEqual(self.stamp(), [sha256_line(self.copy / "requirements.txt", "requirements.txt")])

    def test_a_stamp_in_the_old_one_hash_format_installs_in_place(self):
        self.assertRan(self.run_script())
        (self.copy / ".venv" / STAMP).write_text(hashlib.sha256(b"old").hexdigest() + "\n")
        result = self.run_script()
        self.assertRan(result)
        self.assertIn("Installing dependencies from requirements.txt...", result.output)
        self.assertEqual(self.rebuild_lines(result.output), [])

    def test_run_tests_sh_stamp_covers_every_file_pulled_in_with_r(self):
        first = self.run_script("relay", script="run_tests.sh")
        self.assertEqual(first.returncode, 0, first.output)
        self.assertIn(f"TESTS RAN {self.copy / '.venv-dev'} relay", first.output)
        self.assertEqual(
            sorted(self.stamp(".venv-dev")),
            sorted(
                sha256_line(self.copy / name, name)
                for name in ("requirements-dev.txt", "requirements-demo.txt", "requirements.txt")
            ),
        )
        # a change two -r levels down is seen
        with (self.copy / "requirements.txt").open("a") as f:
            f.write("# a comment changes the file\n")
        again = self.run_script(script="run_tests.sh")
        self.assertEqual(again.returncode, 0, again.output)
        self.assertIn("Installing dependencies from requirements-dev.txt...", again.output)
        self.assertFalse((self.copy / ".venv").exists(), "run_tests.sh keeps to .venv-dev")


class HalfMadeEnvironment(StartScriptCase):
    def assertRebuiltOnce(self, result, why: str):
        self.assertRan(result)
        self.assertEqual(
            self.rebuild_lines(result.output),
            [f"The Python environment in {self.copy / '.venv'} is not usable ({why}): rebuilding it once..."],
        )
        self.assertEqual(self.stamp(), [sha256_line(self.copy / "requirements.txt", "requirements.txt")])

    def test_a_venv_made_without_pip_is_rebuilt(self):
        self.make_venv("--without-pip")
        self.assertRebuiltOnce(self.run_script(), "it has no pip")

    def test_a_venv_whose_python_does_not_start_is_rebuilt(self):
        venv = self.make_venv("--without-pip")
        (venv / "bin" / "python").unlink()
        (venv / "bin" / "python").symlink_to(self.tmp / "removed-python")  # its base Python was removed
        self.assertRebuiltOnce(self.run_script(), "its python does not start or is older than 3.10")

    def test_an_interrupted_install_is_rebuilt(self):
        """Interrupted while pip was writing a package: no stamp, the package's files half there."""
        self.assertRan(self.run_script())
        (self.copy / ".venv" / STAMP).unlink()
        site = next((self.copy / ".venv" / "lib").glob("python3*/site-packages"))
        (site / "tinyagent.py").unlink()
        self.assertRebuiltOnce(self.run_script(), "an earlier install did not finish")

    def test_a_failed_install_is_rebuilt_once_then_the_fix_by_hand_is_printed_and_works(self):
        self.write_requirements(agent="3.0")  # not in the wheel folder: pip fails, as without network
        failed = self.run_script()
        self.assertEqual(failed.returncode, 1, failed.output)
        venv = self.copy / ".venv"
        self.assertEqual(
            self.rebuild_lines(failed.output),
            [
                f"The Python environment in {venv} is not usable (installing requirements.txt failed): "
                "rebuilding it once..."
            ],
        )
        self.assertIn(
            f"Setting up the Python environment in {venv} failed again (installing requirements.txt failed).",
            failed.output,
        )
        self.assertIn("Check your internet connection first.", failed.output)
        fix = f'rm -rf "{venv}" && "{self.copy / "start_unix.sh"}"'
        self.assertEqual(failed.output.splitlines()[-1], f"To fix it by hand, run:  {fix}")
        self.assertFalse((venv / STAMP).exists())

        write_wheel(self.wheels, "tinyagent", "3.0")  # the network is back
        fixed = subprocess.run(
            ["bash", "-c", fix],
            cwd=self.elsewhere,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
        )
        self.assertEqual(fixed.returncode, 0, fixed.stdout)
        self.assertIn(f"AGENT RAN 3.0 {venv}", fixed.stdout)

    def test_debian_python_without_its_venv_package_gets_the_apt_command(self):
        self.use_python(REAL_PYTHON, DEBIAN_PYTHON)
        (self.bin / "apt-get").write_text("#!/bin/bash\nexit 0\n")
        (self.bin / "apt-get").chmod(0o755)
        failed = self.run_script()
        self.assertEqual(failed.returncode, 1, failed.output)
        self.assertEqual(len(self.rebuild_lines(failed.output)), 1, failed.output)
        venv = self.copy / ".venv"
        self.assertIn("cannot install pip into a virtual environment", failed.output)
        self.assertEqual(
            failed.output.splitlines()[-1],
            f"To fix it by hand, run:  sudo apt-get install "
            f'{VENV_PACKAGE} && rm -rf "{venv}" && "{self.copy / "start_unix.sh"}"',
        )

        again = self.run_script()  # not fixed yet: the same advice, no loop, no traceback
        self.assertEqual(again.returncode, 1, again.output)
        self.assertNotIn("Traceback", again.output)

        self.use_python(REAL_PYTHON)  # python3-venv installed: the next start repairs the venv
        self.assertRebuiltOnce(self.run_script(), "it has no pip")


class TooOldPython(StartScriptCase):
    def test_python_3_9_is_refused_with_the_install_hint(self):
        self.use_python("", OLD_PYTHON)
        for script in ("start_unix.sh", "run_tests.sh", ".ci/run"):
            with self.subTest(script):
                if script == ".ci/run":
                    result = subprocess.run(
                        [str(self.copy / ".ci" / "run")],
                        cwd=self.elsewhere,
                        env=self.env(),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        timeout=60,
                    )
                    result.output = result.stdout
                else:
                    result = self.run_script(script=script)
                self.assertEqual(result.returncode, 1, result.output)
                self.assertEqual(
                    result.output.splitlines()[0],
                    "Python not found: IB Data Agent needs Python 3.10 or newer. python3 is Python 3.9.18: too old.",
                )
                self.assertIn("Then run this script again.", result.output)
        self.assertFalse((self.copy / ".venv").exists())
        self.assertFalse((self.copy / ".venv-dev").exists())


class ScriptText(unittest.TestCase):
    def test_the_floor_is_3_10_in_the_version_check(self):
        text = (ROOT / "start_unix.sh").read_text()
        check = re.search(r"^PYTHON_FLOOR_CHECK='([^']*)'", text, re.MULTILINE).group(1)
        self.assertIn("(3, 10)", check)
        self.assertNotIn("python3.9", text)
        from agent import doctor as agent_doctor

        self.assertEqual(agent_doctor.MIN_PYTHON, (3, 10))

    def test_readme_states_the_floor_and_names_every_runtime_dependency_with_its_reason(self):
        readme = (ROOT / "README.md").read_text()
        old = re.search(r".*(?:3\.9\+|3\.9 or newer).*", readme)
        self.assertIsNone(old, old and old.group(0))
        for section in ("### Mac", "### Linux", "## For developers"):
            self.assertIn("3.10", readme.split(section, 1)[1].split("\n##", 1)[0], section)
        table = readme.split("### What gets installed", 1)[1].split("\n##", 1)[0]
        reasons = dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", table, re.MULTILINE))
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
        self.assertGreaterEqual(len(pins), 6)
        self.assertEqual(sorted(reasons), sorted(pins), "each runtime dependency, and only those, with its reason")
        self.assertIn("`aiohttp`", table)


class AgentRunDirectly(unittest.TestCase):
    def test_an_old_python_is_told_what_it_needs_before_any_import_fails(self):
        probe = (
            "import runpy, sys; sys.version_info = (3, 9, 18, 'final', 0); "
            f"runpy.run_path({str(ROOT / 'ib_data_agent.py')!r}, run_name='__main__')"
        )
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.stdout, "")
        self.assertEqual(
            run.stderr.strip(),
            "IB Data Agent needs Python 3.10 or newer (this is Python 3.9): "
            "start it with ./start_unix.sh or start_windows.bat, which say how "
            "to get one",
        )


if __name__ == "__main__":
    unittest.main()
