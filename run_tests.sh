#!/usr/bin/env bash
# Runs the whole test suite: finds Python 3.10+ (or says how to install it), creates .venv-dev on
# first run, installs requirements-dev.txt only when it or a file it pulls in with -r changed (a
# half-made .venv-dev is rebuilt once, as start_unix.sh does for .venv), then runs `python -m tests`
# (arguments pass through, e.g. a module pattern).
set -u
. "$(cd "$(dirname "$0")" && pwd)/start_unix.sh"
PYTHON="$(find_python)" || exit 1
ensure_venv "$PYTHON" "$AGENT_DIR/.venv-dev" "$AGENT_DIR/requirements-dev.txt" || exit 1
cd "$AGENT_DIR"
exec "$AGENT_DIR/.venv-dev/bin/python" -m tests "$@"
