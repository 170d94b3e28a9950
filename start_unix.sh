#!/usr/bin/env bash
# IB Data Agent starter for macOS and Linux (bash 3.2 compatible).
# Finds Python 3.10+, creates .venv next to this script on first run, installs requirements.txt
# only when it changed, then runs the agent with any arguments passed through.
# A half-made .venv (its python does not start, no pip, an install that did not finish) is rebuilt
# once, saying so; when the rebuild fails too, the script prints the one command that fixes it by hand.
# run_tests.sh sources this file for find_python and ensure_venv; start_windows.ps1 mirrors it.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

AGENT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The oldest Python the agent runs on: IB's ibapi 10.50 needs 3.10 (agent/__init__.py MIN_PYTHON).
PYTHON_FLOOR_CHECK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'
STAMP_NAME=".requirements.sha256"
VENV_PROBLEM=""

python_install_hint() {
    echo "Python not found: IB Data Agent needs Python 3.10 or newer.${1:-}" >&2
    if [ "$(uname -s)" = "Darwin" ]; then
        echo "Install it with Homebrew:  brew install python@3.11" >&2
        echo "or download it from https://www.python.org/downloads/macos/" >&2
    else
        echo "Ubuntu/Debian:  sudo apt-get update && sudo apt-get install python3 python3-pip python3-venv" >&2
        echo "Fedora/RHEL:    sudo dnf install python3 python3-pip" >&2
    fi
    echo "Then run this script again." >&2
}

# Prints the first Python 3.10+ on PATH; fails with an install hint when there is none (naming the
# too old Python it found, if any).
find_python() {
    local candidate old=""
    for candidate in python3.13 python3.12 python3.11 python3.10 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            if "$candidate" -c "$PYTHON_FLOOR_CHECK" >/dev/null 2>&1; then
                command -v "$candidate"
                return 0
            fi
            if [ -z "$old" ]; then
                old="$("$candidate" --version 2>&1)"
                old="${old%%$'\n'*}"
                if [ -n "$old" ]; then old=" $candidate is $old: too old."; fi
            fi
        fi
    done
    python_install_hint "$old"
    return 1
}

# requirements_stamp PYTHON REQUIREMENTS_FILE: one line "sha256  name" for every requirements file
# that installing this one reads: the file itself and, recursively, each file it pulls in with -r or
# -c (names relative to the first file's folder). start_windows.ps1 writes the same lines.
requirements_stamp() {
    "$1" - "$2" <<'PY'
import hashlib, os, re, sys
top = os.path.abspath(sys.argv[1])
include = re.compile(r'^\s*(?:-r|-c|--requirement|--constraint)[\s=]*(\S+)')
todo, seen = [top], set()
while todo:
    path = todo.pop(0)
    if path in seen:
        continue
    seen.add(path)
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.relpath(path, os.path.dirname(top)).replace(os.sep, "/")
    print(hashlib.sha256(data).hexdigest() + "  " + name)
    for line in data.decode("utf-8", "replace").splitlines():
        match = include.match(line)
        if match:
            todo.append(os.path.normpath(os.path.join(os.path.dirname(path), match.group(1))))
PY
}

# stamp_covers STAMP_FILE LINES: true when every line is in the stamp, i.e. the last finished install
# read these same files unchanged. The --demo set pulls in the normal one, so after a --demo start a
# normal start installs nothing (and after a normal start only the first --demo start installs).
stamp_covers() {
    local line
    [ -f "$1" ] || return 1
    while IFS= read -r line; do
        grep -Fxq -- "$line" "$1" || return 1
    done <<LINES
$2
LINES
}

# install_requirements VENV REQUIREMENTS_FILE STAMP_LINES: the stamp goes first and comes back only
# when pip has finished, so an interrupted install leaves no stamp and the next start rebuilds.
install_requirements() {
    rm -f "$1/$STAMP_NAME"
    if ! "$1/bin/python" -m pip install --disable-pip-version-check -q -r "$2"; then
        VENV_PROBLEM="installing $(basename "$2") failed"
        return 1
    fi
    printf '%s\n' "$3" > "$1/$STAMP_NAME"
}

# build_venv PYTHON VENV REQUIREMENTS_FILE STAMP_LINES: a new venv with the requirements installed.
build_venv() {
    rm -rf "$2"
    if ! "$1" -m venv "$2"; then
        VENV_PROBLEM="creating it with $1 failed"
        return 1
    fi
    if ! "$2/bin/python" -m pip --version >/dev/null 2>&1; then
        VENV_PROBLEM="$1 made it without pip"
        return 1
    fi
    install_requirements "$2" "$3" "$4"
}

# fix_by_hand PYTHON VENV: after the rebuild failed as well, the one command that fixes it by hand.
fix_by_hand() {
    local command="rm -rf \"$2\" && \"$AGENT_DIR/$(basename "$0")\"" package
    echo "Setting up the Python environment in $2 failed again ($VENV_PROBLEM)." >&2
    if ! "$1" -c 'import ensurepip' >/dev/null 2>&1; then
        # Ubuntu/Debian ship the part of venv that installs pip as a package of its own
        echo "$1 cannot install pip into a virtual environment (its venv support is not installed)." >&2
        if command -v apt-get >/dev/null 2>&1; then
            package="$("$1" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"
            command="sudo apt-get install $package && $command"
        fi
    else
        echo "Check your internet connection first." >&2
    fi
    echo "To fix it by hand, run:  $command" >&2
}

# ensure_venv PYTHON VENV_DIR REQUIREMENTS_FILE: a venv whose last finished install covers these
# requirements. Made on the first run; a half-made one is rebuilt once, saying why; requirements
# that changed are installed into it in place (and it is rebuilt once when that fails).
ensure_venv() {
    local python="$1" venv="$2" requirements="$3" wanted
    if ! wanted="$(requirements_stamp "$python" "$requirements")"; then
        echo "Could not read $requirements: re-download the agent." >&2
        return 1
    fi
    VENV_PROBLEM=""
    if [ ! -e "$venv" ]; then
        echo "Setting up Python environment in $venv (first run only)..."
        build_venv "$python" "$venv" "$requirements" "$wanted" && return 0
    elif ! "$venv/bin/python" -c "$PYTHON_FLOOR_CHECK" >/dev/null 2>&1; then
        VENV_PROBLEM="its python does not start or is older than 3.10"
    elif stamp_covers "$venv/$STAMP_NAME" "$wanted"; then
        return 0
    elif ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        VENV_PROBLEM="it has no pip"
    elif [ ! -f "$venv/$STAMP_NAME" ]; then
        VENV_PROBLEM="an earlier install did not finish"
    else
        echo "Installing dependencies from $(basename "$requirements")..."
        install_requirements "$venv" "$requirements" "$wanted" && return 0
    fi
    echo "The Python environment in $venv is not usable ($VENV_PROBLEM): rebuilding it once..."
    build_venv "$python" "$venv" "$requirements" "$wanted" && return 0
    fix_by_hand "$python" "$venv"
    return 1
}

main() {
    local python requirements="$AGENT_DIR/requirements.txt"
    # --demo also runs the fake MA Tracker cloud, which needs aiohttp
    if [ "${1:-}" = "--demo" ]; then requirements="$AGENT_DIR/requirements-demo.txt"; fi
    python="$(find_python)" || exit 1
    ensure_venv "$python" "$AGENT_DIR/.venv" "$requirements" || exit 1
    exec "$AGENT_DIR/.venv/bin/python" "$AGENT_DIR/ib_data_agent.py" "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
