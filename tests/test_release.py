"""The release zips (tools/build_release.py): layout, the key stamped into config.env and nowhere
else, the bundled Python's ._pth, the Windows wheels and their offline install, and the unix zip
extracted and started with ./start_unix.sh against the fake TWS and the fake relay.

pip downloads reach the package registry once per test run (the Windows wheels during the build,
this machine's wheels for the offline installs); everything else stays on loopback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path, PurePosixPath

from agent.config import VARIABLES, read_raw

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "tools" / "build_release.py"
KEY = "tk_Release-Test.7f3a9c2e41b8"  # distinctive, so finding it anywhere is no accident
VERSION = "1.2.3-test"
TOP = "ib-data-agent/"
PTH = "python311._pth"
EMBEDDABLE_PTH = "python311.zip\r\n.\r\n\r\n# Uncomment to run site.main() automatically\r\n#import site\r\n"
RUNTIME_IMPORTS = "import ibapi, google.protobuf, websocket, dotenv, tenacity"

spec = importlib.util.spec_from_file_location("build_release", BUILD_SCRIPT)
build_release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_release)

_run_dir = None  # one temporary folder per test run: the built zips and the downloaded wheels


def setUpModule():
    global _run_dir
    _run_dir = Path(tempfile.mkdtemp(prefix="test_release_"))


def tearDownModule():
    shutil.rmtree(_run_dir, ignore_errors=True)


def stand_in_embeddable_python(folder: Path, tag: str = "311") -> Path:
    """The layout of python-3.11.x-embed-amd64.zip (or another version's), with placeholders for the binaries."""
    path = folder / f"python-{tag[0]}.{tag[1:]}.9-embed-amd64.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("python.exe", b"MZ stand-in")
        zf.writestr(f"python{tag}.dll", b"MZ stand-in")
        zf.writestr(f"python{tag}.zip", b"PK stand-in")
        zf.writestr(f"python{tag}._pth", EMBEDDABLE_PTH.replace("python311", f"python{tag}"))
    return path


def run_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )


def built_zips() -> dict:
    """Both zips, built once per run with the command line the web app uses."""
    out = _run_dir / "dist"
    if not out.is_dir():
        result = run_build(
            "--key",
            KEY,
            "--version",
            VERSION,
            "--out",
            str(out),
            "--embeddable-python",
            str(stand_in_embeddable_python(_run_dir)),
        )
        if result.returncode != 0:
            shutil.rmtree(out, ignore_errors=True)
            raise AssertionError(f"build failed: {result.stderr}")
        (_run_dir / "build-output.txt").write_text(result.stdout + result.stderr)
    return {"unix": out / f"ib-data-agent-{VERSION}-unix.zip", "windows": out / f"ib-data-agent-{VERSION}-windows.zip"}


def local_wheels() -> Path:
    """This machine's wheels of requirements.txt and pip, downloaded once per run."""
    folder = _run_dir / "local-wheels"
    if not folder.is_dir():
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "-d",
                str(folder),
                "-r",
                str(ROOT / "requirements.txt"),
                "pip",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise AssertionError(f"pip download failed: {result.stdout}")
    return folder


def offline_pip_env(wheels: Path) -> dict:
    """The environment minus anything that would let the agent or pip use this checkout or an index."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in VARIABLES and not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1"
    )
    return env


def entries(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return {info.filename: (info, zf.read(info)) for info in zf.infolist()}


def extract(zip_path: Path, dest: Path) -> Path:
    """Like unzip: files with the mode bits the zip records."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
    return dest / TOP.rstrip("/")


def ps1_pip_arguments(requirements: Path, wheels: Path) -> list:
    """The pip arguments start_windows.ps1 builds when the release has a wheels folder."""
    text = (ROOT / "start_windows.ps1").read_text()
    values = {"$Requirements": str(requirements), "$Wheels": str(wheels)}
    arguments = []
    for line in re.findall(r"^\s*\$PipArgs \+?= @\((.*)\)\s*$", text, re.MULTILINE):
        for literal, variable in re.findall(r"'([^']*)'|(\$\w+)", line):
            arguments.append(literal or values[variable])
    return arguments


class ReleaseZipsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.zips = built_zips()
        cls.unix = entries(cls.zips["unix"])
        cls.windows = entries(cls.zips["windows"])

    def names(self, zip_entries: dict) -> set:
        self.assertTrue(all(name.startswith(TOP) for name in zip_entries), "everything under ib-data-agent/")
        return {name[len(TOP) :] for name in zip_entries}

    def test_both_zips_have_the_agent_scripts_config_and_ibapi(self):
        for kind, zip_entries in (("unix", self.unix), ("windows", self.windows)):
            with self.subTest(kind):
                names = self.names(zip_entries)
                for name in build_release.AGENT_FILES + (
                    "ib_data_agent.py",
                    "ibapi/__init__.py",
                    "ibapi/client.py",
                    "ibapi/wrapper.py",
                ):
                    self.assertIn(name, names)
                top_modules = {n for n in names if "/" not in n and n.endswith(".py")}
                self.assertEqual(top_modules, {"ib_data_agent.py", "ib_scanner.py"})
                package = {n for n in names if n.startswith("agent/") and n.endswith(".py")}
                self.assertEqual(package, {p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").rglob("*.py")})
                for name in names:
                    parts = PurePosixPath(name).parts
                    self.assertNotIn("__pycache__", parts)
                    if name not in build_release.EXTRA_FILES:
                        self.assertNotIn(parts[0], ("tests", ".venv", ".venv-dev", "tools", ".git", "dist"), name)
                    self.assertFalse(name.endswith((".pyc", ".log")), name)

    def test_every_module_git_tracks_ships(self):
        tracked = subprocess.run(
            ["git", "ls-files", "*.py"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        if tracked.returncode != 0:
            self.skipTest("not a git checkout")
        agent_code = {name for name in tracked.stdout.split() if "/" not in name or name.startswith("agent/")}
        self.assertIn("agent/config.py", agent_code)
        self.assertLessEqual(agent_code, self.names(self.unix))

    def test_windows_zip_adds_python_bundle_and_wheels_only(self):
        unix, windows = self.names(self.unix), self.names(self.windows)
        self.assertEqual({n.split("/")[0] for n in windows - unix}, {"python_bundle", "wheels"})
        self.assertLessEqual(unix, windows)
        for name in ("python.exe", "python311.dll", "python311.zip", PTH):
            self.assertIn(f"python_bundle/{name}", windows)

    def test_key_is_only_in_config_env(self):
        for kind, zip_entries in (("unix", self.unix), ("windows", self.windows)):
            with self.subTest(kind):
                holders = [name for name, (_info, data) in zip_entries.items() if KEY.encode() in data]
                self.assertEqual(holders, [TOP + "config.env"])
                self.assertFalse([name for name in zip_entries if KEY in name])
        self.assertEqual(
            sorted(p.name for p in self.zips["unix"].parent.iterdir()), sorted(p.name for p in self.zips.values())
        )
        self.assertNotIn(KEY, (_run_dir / "build-output.txt").read_text())

    def test_config_env_reads_back_the_key_and_is_otherwise_the_template(self):
        _info, data = self.unix[TOP + "config.env"]
        stamped = _run_dir / "stamped-config.env"
        stamped.write_bytes(data)
        self.assertEqual(read_raw(stamped, environ={})["IB_PROVIDER_KEY"], KEY)
        template = (ROOT / "config.env").read_text().splitlines()
        changed = [(a, b) for a, b in zip(template, data.decode().splitlines()) if a != b]
        self.assertEqual(changed, [("IB_PROVIDER_KEY=YOUR_API_KEY_HERE", f"IB_PROVIDER_KEY={KEY}")])
        self.assertEqual(len(template), len(data.decode().splitlines()))
        self.assertEqual(self.windows[TOP + "config.env"][1], data)

    def test_ibapi_is_the_pinned_package(self):
        installed = Path(importlib.metadata.distribution("ibapi-stable").locate_file("ibapi"))
        for name in ("client.py", "decoder.py", "__init__.py"):
            self.assertEqual(self.unix[f"{TOP}ibapi/{name}"][1], (installed / name).read_bytes())
        init = self.unix[TOP + "ibapi/__init__.py"][1].decode()
        pin = re.search(r"^ibapi-stable==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
        major, minor, micro = pin.split(".")
        self.assertIn(f'VERSION = {{"major": {major}, "minor": {minor}, "micro": {micro}}}', init)

    def test_bundled_pth_imports_site_and_finds_the_agent_folder(self):
        _info, data = self.windows[f"{TOP}python_bundle/{PTH}"]
        lines = data.decode().split("\r\n")
        self.assertEqual(lines[-1], "", "ends with a line break, CRLF kept")
        self.assertIn("import site", lines)
        self.assertNotIn("#import site", lines)
        self.assertIn("..", lines)
        self.assertEqual(lines[:2], ["python311.zip", "."])

    def test_script_line_endings_and_modes(self):
        for zip_entries in (self.unix, self.windows):
            for name in ("start_windows.bat", "start_windows.ps1"):
                data = zip_entries[TOP + name][1]
                self.assertEqual(data.count(b"\n"), data.count(b"\r\n"), name)
                self.assertTrue(data.endswith(b"\r\n"), name)
            info, data = zip_entries[TOP + "start_unix.sh"]
            self.assertNotIn(b"\r", data)
            self.assertEqual(info.create_system, 3)
            self.assertEqual((info.external_attr >> 16) & 0o777, 0o755)
            self.assertEqual((zip_entries[TOP + "config.env"][0].external_attr >> 16) & 0o777, 0o644)

    def test_wheels_cover_every_requirement_for_the_bundled_python(self):
        wheels = [PurePosixPath(n).name for n in self.names(self.windows) if n.startswith("wheels/")]
        pins = [
            pin
            for name in ("requirements.txt", "requirements-demo.txt")
            for pin in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / name).read_text(), re.MULTILINE)
        ]
        self.assertGreaterEqual(len(pins), 6)
        for name, version in pins + [("pip", None)]:
            with self.subTest(name):
                prefix = re.sub(r"[-_.]+", "_", name).lower() + "-" + (version + "-" if version else "")
                found = [w for w in wheels if w.lower().startswith(prefix)]
                self.assertEqual(len(found), 1, f"{prefix}* in {wheels}")
                platform_tag = found[0][: -len(".whl")].split("-")[-1]
                self.assertIn(platform_tag, ("any", "win_amd64"))


class BuildRefusesTest(unittest.TestCase):
    def setUp(self):
        self.out = Path(tempfile.mkdtemp(prefix="test_release_refuses_"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def assert_refused(self, result, *words):
        self.assertEqual(result.returncode, 2, result.stderr)
        for word in words:
            self.assertIn(word, result.stderr)
        self.assertEqual(list(self.out.iterdir()), [])

    def test_a_malformed_key_without_quoting_it(self):
        for bad_key in ("has space-k3y", "YOUR_API_KEY_HERE", "tab\tk3y", "ümlaut-k3y", '"quoted-k3y"'):
            with self.subTest(bad_key):
                result = run_build("--key", bad_key, "--version", "1.0.0", "--out", str(self.out), "--no-bundle")
                self.assert_refused(result, "--key")
                self.assertNotIn("k3y", result.stdout + result.stderr)

    def test_without_embeddable_python_unless_no_bundle(self):
        result = run_build("--key", KEY, "--version", "1.0.0", "--out", str(self.out))
        self.assert_refused(result, "--embeddable-python", "--no-bundle")

    def test_a_zip_that_is_not_an_embeddable_python(self):
        bogus = self.out / "bogus.zip"
        with zipfile.ZipFile(bogus, "w") as zf:
            zf.writestr("readme.txt", "not python")
        result = run_build(
            "--key", KEY, "--version", "1.0.0", "--out", str(self.out / "dist"), "--embeddable-python", str(bogus)
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("not a Windows embeddable Python zip", result.stderr)
        self.assertFalse((self.out / "dist").exists())

    def test_an_embeddable_python_older_than_3_10(self):
        """The bundled Python is the Windows users' Python: it must meet the agent's 3.10 floor."""
        self.assertEqual(build_release.MIN_PYTHON, (3, 10))
        for tag in ("38", "39"):
            with self.subTest(tag):
                result = run_build(
                    "--key",
                    KEY,
                    "--version",
                    "1.0.0",
                    "--out",
                    str(self.out / "dist"),
                    "--embeddable-python",
                    str(stand_in_embeddable_python(self.out, tag)),
                )
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(f"Python 3.{tag[1:]} is too old; the agent needs 3.10 or newer", result.stderr)
                self.assertFalse((self.out / "dist").exists())
        for tag in ("310", "313"):
            self.assertEqual(build_release.bundle_files(stand_in_embeddable_python(self.out, tag))[0], tag)

    def test_a_version_that_is_not_a_file_name_part(self):
        result = run_build("--key", KEY, "--version", "../1", "--out", str(self.out), "--no-bundle")
        self.assert_refused(result, "--version")

    def test_no_bundle_builds_windows_zip_without_python(self):
        zips = build_release.build_release(KEY, "1.0.0", self.out, no_bundle=True)
        names = set(entries(zips["windows"]))
        self.assertIn(TOP + "start_windows.bat", names)
        self.assertFalse([n for n in names if n.startswith((TOP + "python_bundle/", TOP + "wheels/"))])


class OfflineInstallTest(unittest.TestCase):
    def test_pip_run_from_its_wheel_installs_with_the_ps1_arguments_into_a_python_without_pip(self):
        """The embeddable Python's first start: no pip installed, pip runs from wheels/pip-*.whl."""
        wheels = local_wheels()
        venv = _run_dir / "no-pip-python"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        self.assertNotEqual(subprocess.run([python, "-c", "import pip"], stderr=subprocess.DEVNULL).returncode, 0)
        arguments = ps1_pip_arguments(ROOT / "requirements.txt", wheels)
        self.assertIn("--no-index", arguments)
        pip_wheel = next(wheels.glob("pip-*.whl"))
        result = subprocess.run(
            [python, f"{pip_wheel}/pip", *arguments],
            env=offline_pip_env(_run_dir / "nowhere"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertEqual(subprocess.run([python, "-c", RUNTIME_IMPORTS]).returncode, 0)


class UnixZipRunTest(unittest.TestCase):
    """A user's first start: unzip, ./start_unix.sh (venv + install), the cloud asks for a chain.
    The key comes from the zip's config.env: the environment carries none."""

    def test_extracted_zip_starts_and_answers_a_fetch_chain(self):
        from tests.agent_process import ManagedProcess
        from tests.fake_relay import FakeRelay
        from tests.fake_tws import FakeTWS

        agent_dir = extract(built_zips()["unix"], _run_dir / "unix-run")
        self.assertTrue(os.access(agent_dir / "start_unix.sh", os.X_OK))
        tws = FakeTWS(port=0, accounts=("DU1234567",), seed=1)
        tws_port = tws.start()
        self.addCleanup(tws.stop)
        relay = FakeRelay(port=0, key=KEY)
        relay.start()
        self.addCleanup(relay.stop)

        env = offline_pip_env(local_wheels())
        env.update(RELAY_URL=relay.url, IB_PORT=str(tws_port), AGENT_DATA_DIR=str(agent_dir), PYTHONUNBUFFERED="1")
        agent = ManagedProcess(["./start_unix.sh"], env=env, cwd=agent_dir).start()
        self.addCleanup(agent.stop)
        try:
            relay.wait_until(lambda: relay.hello or agent.process.poll() is not None, 180, "the agent's hello")
            self.assertIsNone(agent.process.poll(), agent.output)
            relay.wait_until(
                lambda: (
                    ((relay.last_status or relay.hello).get("ib") or {}).get("connected")
                    or agent.process.poll() is not None
                ),
                60,
                "IB connected",
            )
            response = relay.request(
                "fetch-chain", {"ticker": "AAPL", "max_days": 45, "strikes_around": 2}, timeout_s=60
            )
        except TimeoutError as exc:
            self.fail(f"{exc}\n{agent.output}")
        self.assertTrue(response["ok"], f"{response}\n{agent.output}")
        self.assertTrue(response["data"]["options"], response)
        self.assertTrue((agent_dir / ".venv" / ".requirements.sha256").is_file())

        # start_unix.sh execs the agent, so this is the agent's own SIGTERM: a clean stop, exit 0
        self.assertEqual(agent.stop(timeout=30), 0, agent.output)
        self.assertNotIn(KEY, agent.output)
        for log_file in agent_dir.glob("*.log*"):
            self.assertNotIn(KEY, log_file.read_text(errors="replace"), log_file.name)


if __name__ == "__main__":
    unittest.main()
