"""Builds the zips the MA Tracker web app hands to one user: the agent with that user's key.

    python tools/build_release.py --key KEY --version 1.0.0 --out dist/ \
        --embeddable-python python-3.11.9-embed-amd64.zip

writes ib-data-agent-<version>-unix.zip and ib-data-agent-<version>-windows.zip, laid out as the
README's Files section under a top folder ib-data-agent/. The Windows zip carries the embeddable
Python (python_bundle/) and the wheels of every requirement for it (wheels/, with pip's own wheel to
install them), so its first start needs no network; --no-bundle leaves both out.

The key goes into that zip's config.env and nowhere else: it is never printed, logged, or put in
a file name, and an error message never quotes it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dotenv import dotenv_values  # noqa: E402

from agent import MIN_PYTHON  # noqa: E402  (the agent's floor)
from agent.config import PLACEHOLDER_KEY, VARIABLES, ConfigError  # noqa: E402  (the one key check)
from agent.demo import DEMO_FILES  # noqa: E402

TOP_FOLDER = "ib-data-agent"
IBAPI_DISTRIBUTION = "ibapi-stable"
WINDOWS_PLATFORM = "win_amd64"
AGENT_PACKAGE = "agent"
# Next to the agent's Python modules (every one of them ships; see agent_modules).
AGENT_FILES = (
    "config.env",
    "requirements.txt",
    "requirements-demo.txt",
    "README.md",
    "start_unix.sh",
    "start_windows.bat",
    "start_windows.ps1",
)
# Files from outside the top level that users need as well: the test doubles --demo starts.
EXTRA_FILES: Tuple[str, ...] = DEMO_FILES
EXECUTABLE_FILES = ("start_unix.sh",)
LINE_ENDINGS = {".bat": b"\r\n", ".ps1": b"\r\n", ".sh": b"\n"}  # whatever git checked out
KEY_LINE = re.compile(rf"^IB_PROVIDER_KEY={PLACEHOLDER_KEY}[ \t]*\r?$", re.MULTILINE)
PTH_NAME = re.compile(r"^python(\d+)\._pth$")


class ReleaseError(Exception):
    """One line for the person running the build; never contains the key."""


def validated_key(raw: str) -> str:
    _attr, parse_key = VARIABLES["IB_PROVIDER_KEY"]
    try:
        return parse_key("--key", raw)
    except ConfigError as exc:  # its message names --key, never the value
        raise ReleaseError(str(exc)) from None


def stamped_config(key: str) -> bytes:
    """config.env with the placeholder line replaced, checked by reading it back as the agent does."""
    template = (ROOT / "config.env").read_text(encoding="utf-8")
    if len(KEY_LINE.findall(template)) != 1:
        raise ReleaseError(f"config.env must have exactly one line IB_PROVIDER_KEY={PLACEHOLDER_KEY}")
    text = KEY_LINE.sub(lambda _match: f"IB_PROVIDER_KEY={key}", template)
    if dotenv_values(stream=io.StringIO(text)).get("IB_PROVIDER_KEY") != key:
        raise ReleaseError("--key cannot be written to config.env so that it reads back unchanged")
    return text.encode("utf-8")


def agent_modules() -> List[str]:
    """The two top-level faces (ib_data_agent.py, ib_scanner.py) and every module of the agent/ package."""
    paths = list(ROOT.glob("*.py")) + list((ROOT / AGENT_PACKAGE).rglob("*.py"))
    return sorted(path.relative_to(ROOT).as_posix() for path in paths)


def pinned_version(distribution: str) -> str:
    pattern = re.compile(rf"^\s*{re.escape(distribution)}\s*==\s*([^\s;#]+)", re.IGNORECASE | re.MULTILINE)
    match = pattern.search((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    if not match:
        raise ReleaseError(f"requirements.txt pins no {distribution}==VERSION")
    return match.group(1)


def ibapi_files() -> Iterator[Tuple[str, bytes]]:
    """ibapi/ from the installed pinned package (never from a folder that happens to be on sys.path)."""
    pin = pinned_version(IBAPI_DISTRIBUTION)
    try:
        dist = importlib.metadata.distribution(IBAPI_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ReleaseError(
            f"{IBAPI_DISTRIBUTION} is not installed in this Python; run the build with .venv-dev/bin/python"
        ) from None
    if dist.version != pin:
        raise ReleaseError(f"{IBAPI_DISTRIBUTION} {dist.version} is installed but requirements.txt pins {pin}")
    files = [f for f in dist.files or () if f.parts[0] == "ibapi" and "__pycache__" not in f.parts]
    if not any(f.name == "__init__.py" and len(f.parts) == 2 for f in files):
        raise ReleaseError(f"{IBAPI_DISTRIBUTION} {pin} has no ibapi/__init__.py")
    for f in sorted(files, key=str):
        yield PurePosixPath(*f.parts).as_posix(), Path(f.locate()).read_bytes()


def source_file(name: str) -> bytes:
    data = (ROOT / name).read_bytes()
    eol = LINE_ENDINGS.get(PurePosixPath(name).suffix)
    if eol:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", eol)
    return data


def common_files(key: str) -> Iterator[Tuple[str, bytes]]:
    for name in agent_modules() + [n for n in AGENT_FILES if n != "config.env"] + list(EXTRA_FILES):
        yield name, source_file(name)
    yield "config.env", stamped_config(key)
    yield from ibapi_files()


def patched_pth(text: str) -> str:
    """Keep `import site` (packages in Lib\\site-packages) and add the agent folder: a ._pth file
    puts Python in isolated mode, where the script's own folder is not on sys.path."""
    eol = "\r\n" if "\r\n" in text else "\n"
    lines = [line.strip() for line in text.splitlines()]
    lines = ["import site" if line == "#import site" else line for line in lines]
    if "import site" not in lines:
        lines.append("import site")
    if ".." not in lines:
        lines.insert(lines.index(".") + 1 if "." in lines else 0, "..")
    return eol.join(lines) + eol


def bundle_files(embeddable_zip: Path) -> Tuple[str, List[Tuple[str, bytes]]]:
    """python_bundle/ from the embeddable Python zip, and that Python's version tag (e.g. "311")."""
    try:
        with zipfile.ZipFile(embeddable_zip) as zf:
            members = [(info.filename, zf.read(info)) for info in zf.infolist() if not info.is_dir()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReleaseError(
            f"--embeddable-python {embeddable_zip}: not a readable zip ({exc.__class__.__name__})"
        ) from None
    names = {name for name, _data in members}
    pth = [name for name in names if PTH_NAME.match(name)]
    if "python.exe" not in names or len(pth) != 1:
        raise ReleaseError(
            f"--embeddable-python {embeddable_zip}: not a Windows embeddable Python zip "
            "(python.exe and one pythonXY._pth at its top level)"
        )
    files = [
        (f"python_bundle/{name}", patched_pth(data.decode("utf-8")).encode("utf-8") if name == pth[0] else data)
        for name, data in members
    ]
    tag = PTH_NAME.match(pth[0]).group(1)
    if (int(tag[0]), int(tag[1:] or 0)) < MIN_PYTHON:
        raise ReleaseError(
            f"--embeddable-python {embeddable_zip}: Python {tag[0]}.{tag[1:]} is too old; the agent "
            f"needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (e.g. python-3.11.9-embed-amd64.zip)"
        )
    return tag, files


def windows_wheels(python_version: str) -> List[Tuple[str, bytes]]:
    """wheels/: every requirement (--demo's too) built for the bundled Python on 64-bit Windows, and pip."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "-q",
            "--only-binary=:all:",
            "--platform",
            WINDOWS_PLATFORM,
            "--python-version",
            python_version,
            "-d",
            folder,
            "-r",
            str(ROOT / "requirements-demo.txt"),
            "pip",
        ]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise ReleaseError(f"pip download of the Windows wheels failed:\n{result.stdout.strip()}")
        return [(f"wheels/{path.name}", path.read_bytes()) for path in sorted(Path(folder).glob("*.whl"))]


def write_zip(path: Path, files: List[Tuple[str, bytes]]) -> None:
    timestamp = time.localtime()[:6]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(f"{TOP_FOLDER}/{name}", date_time=timestamp)
            info.create_system = 3  # unix: unzip and macOS honour the mode bits below
            mode = 0o755 if name in EXECUTABLE_FILES else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)


def build_release(
    key: str,
    version: str,
    out_dir: Path,
    embeddable_python: Optional[Path] = None,
    wheels_python_version: Optional[str] = None,
    no_bundle: bool = False,
) -> Dict[str, Path]:
    """Writes both zips into out_dir; returns {"unix": path, "windows": path}."""
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z.+-]*", version):
        raise ReleaseError(f"--version {version!r}: use letters, digits, '.', '+' and '-' only")
    if embeddable_python is None and not no_bundle:
        raise ReleaseError(
            "--embeddable-python PATH is required (the python-3.11.x-embed-amd64.zip from "
            "python.org); --no-bundle builds the Windows zip without Python and wheels"
        )
    key = validated_key(key)
    common = list(common_files(key))
    windows = list(common)
    if not no_bundle:
        bundle_version, bundle = bundle_files(Path(embeddable_python))
        if wheels_python_version and wheels_python_version != bundle_version:
            raise ReleaseError(
                f"--wheels-python-version {wheels_python_version} does not match the "
                f"embeddable Python ({bundle_version})"
            )
        windows += bundle + windows_wheels(bundle_version)
    out_dir.mkdir(parents=True, exist_ok=True)
    zips = {
        "unix": out_dir / f"{TOP_FOLDER}-{version}-unix.zip",
        "windows": out_dir / f"{TOP_FOLDER}-{version}-windows.zip",
    }
    write_zip(zips["unix"], common)
    write_zip(zips["windows"], windows)
    return zips


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", required=True, help="the user's API key (written only into config.env)")
    parser.add_argument("--version", required=True, help="release version, e.g. 1.0.0")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--embeddable-python", type=Path, help="python-3.X.Y-embed-amd64.zip from python.org")
    parser.add_argument("--wheels-python-version", help="e.g. 311; default: the embeddable Python's")
    parser.add_argument(
        "--no-bundle",
        action="store_true",
        help="Windows zip without python_bundle/ and wheels/ (users need Python 3.10+)",
    )
    args = parser.parse_args(argv)
    try:
        zips = build_release(
            args.key, args.version, args.out, args.embeddable_python, args.wheels_python_version, args.no_bundle
        )
    except ReleaseError as exc:
        print(f"build_release: {exc}", file=sys.stderr)
        return 2
    for path in zips.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
