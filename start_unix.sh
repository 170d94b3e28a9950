#!/usr/bin/env bash
# IB Data Agent starter for macOS and Linux (bash 3.2 compatible).
# Finds Python 3.9+, creates .venv next to this script on first run, installs requirements.txt
# only when it changed, then runs the agent with any arguments passed through.
# run_tests.sh sources this file for find_python and ensure_venv.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

AGENT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python_install_hint() {
    echo "Python not found: IB Data Agent needs Python 3.9 or newer." >&2
    if [ "$(uname -s)" = "Darwin" ]; then
        echo "Install it with Homebrew:  brew install python@3.11" >&2
        echo "or download it from https://www.python.org/downloads/macos/" >&2
    else
        echo "Ubuntu/Debian:  sudo apt-get update && sudo apt-get install python3 python3-pip python3-venv" >&2
        echo "Fedora/RHEL:    sudo dnf install python3 python3-pip" >&2
    fi
    echo "Then run this script again." >&2
}

# Prints the first Python 3.9+ on PATH; fails with an install hint when there is none.
find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3.10 python3.9 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    python_install_hint
    return 1
}

# ensure_venv PYTHON VENV_DIR REQUIREMENTS_FILE: (re)creates the venv when missing or broken and
# installs the requirements when their hash differs from the one recorded at the last install.
ensure_venv() {
    local python="$1" venv="$2" requirements="$3" stamp wanted
    stamp="$venv/.requirements.sha256"
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "Setting up Python environment in $venv (first run only)..."
        rm -rf "$venv"
        if ! "$python" -m venv "$venv"; then
            echo "Could not create a virtual environment with $python." >&2
            echo "On Ubuntu/Debian: sudo apt-get install python3-venv" >&2
            return 1
        fi
    fi
    wanted="$("$venv/bin/python" -c 'import hashlib, sys
h = hashlib.sha256()
for p in sys.argv[1:]:
    h.update(open(p, "rb").read())
print(h.hexdigest())' "$requirements" "$AGENT_DIR/requirements.txt")"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        echo "Installing dependencies from $(basename "$requirements")..."
        if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements"; then
            echo "Installing dependencies failed; check your internet connection and run this script again." >&2
            return 1
        fi
        echo "$wanted" > "$stamp"
    fi
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
