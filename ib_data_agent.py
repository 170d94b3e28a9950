"""IB Data Agent: connects Interactive Brokers TWS / IB Gateway on this computer to the MA Tracker
web app. Run it with ./start_unix.sh or start_windows.bat, or `python ib_data_agent.py`.

This file is the wiring: config, logging, the TWS connection, the scanner, the order desk and its
order events, the worker lanes and the relay link, plus signals and exit codes (0 after Ctrl-C /
SIGTERM, 2 for a bad config or another agent already running on the same data folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional, Tuple

from agent import MIN_PYTHON  # noqa: E402  (importable by any Python 3)

if sys.version_info < MIN_PYTHON:  # run directly, not through the start scripts that check it
    sys.exit(
        "IB Data Agent needs Python %d.%d or newer (this is Python %d.%d): start it with "
        "./start_unix.sh or start_windows.bat, which say how to get one" % (MIN_PYTHON + sys.version_info[:2])
    )

import filelock  # noqa: E402  (what follows needs MIN_PYTHON: ibapi uses `match`)

from agent import log as agent_log  # noqa: E402
from agent.config import Config, ConfigError, configured_key, load_config  # noqa: E402
from agent.ib.connection import IBConnection  # noqa: E402
from agent.ib.ports import candidate_ports  # noqa: E402
from agent.ib.subscriptions import Subscriptions  # noqa: E402
from agent.orders.desk import OrderDesk  # noqa: E402
from agent.orders.events import OrderEvents  # noqa: E402
from agent.relay.actions import RequestRunner  # noqa: E402
from agent.relay.link import RelayLink  # noqa: E402
from ib_scanner import Scanner  # noqa: E402

__version__ = "1.0.0"

log = agent_log.logger()

EXIT_OK, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 2, 130
REQUEST_DRAIN_S = 3.0
TWS_STOP_S = 5.0
SIGNAL_POLL_S = 0.2


class Agent:
    """Owns the running parts and their order of start and stop."""

    def __init__(self, config: Config, stopping: threading.Event):
        self.config = config
        self._stopping = stopping
        self.conn = IBConnection(config, on_change=self._ib_changed)
        self.scanner = Scanner(self.conn, config)
        self.desk = OrderDesk(self.conn, config)
        self.subscriptions = Subscriptions(self.scanner, self.conn)
        self.runner = RequestRunner(
            self.conn,
            self.scanner,
            self.desk,
            workers=config.agent_workers,
            queue_size=config.agent_queue_size,
            subscriptions=self.subscriptions,
        )
        self.link = RelayLink(
            config.relay_url,
            config.key,
            __version__,
            self.runner.names,
            self.conn.status,
            self.runner.submit,
            hello_fields=self.subscriptions.hello_fields,
        )
        self.subscriptions.attach(self.link)
        self.events = OrderEvents(self.conn, self.link.push)  # order `event` frames (best effort)

    def run(self) -> int:
        if self.config.ib_port:
            where = f"port {self.config.ib_port}"
        else:  # "(a paper account on port 7497, 4002, 7496 or 4001)"
            ports = [str(p) for p in candidate_ports(None, self.config.ib_mode)]
            where = f"(a {self.config.ib_mode} account on port {', '.join(ports[:-1])} or {ports[-1]})"
        log.info("Connecting to TWS / IB Gateway on %s %s and to the MA Tracker cloud", self.config.ib_host, where)
        self.runner.start()
        self.subscriptions.start()
        self.link.start()
        self.conn.start()
        # The main thread only ever waits in short slices: a signal the OS hands to another thread
        # is run here at the next slice, so a second Ctrl-C always quits at once.
        while not self._stopping.wait(SIGNAL_POLL_S):
            pass
        log.info("Stopping (press Ctrl-C again to quit at once)")
        stopper = threading.Thread(target=self._shutdown, name="shutdown", daemon=True)
        stopper.start()
        while stopper.is_alive():
            stopper.join(SIGNAL_POLL_S)
        return EXIT_OK

    def _ib_changed(self) -> None:
        """Any thread, must not block: the status frame goes out from the link's own thread.
        (agent.ib.connection writes the console lines about connecting and losing TWS.)"""
        self.link.status_changed()

    def _shutdown(self) -> None:
        self.runner.stop(timeout=REQUEST_DRAIN_S)  # in-flight requests answer CANCELLED over the link
        self.subscriptions.close()  # their lines are cancelled at TWS
        self.scanner.close()
        self.conn.stop(timeout=TWS_STOP_S)
        self.events.close()
        self.link.stop()
        log.info("IB Data Agent stopped")


def handle_stop_signals() -> threading.Event:
    """Ctrl-C / SIGTERM: the first sets the returned event (graceful stop), the second quits at once."""
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:  # no logging here: the handler may interrupt a log write
        if stopping.is_set():
            os._exit(EXIT_INTERRUPTED)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return stopping


def config_error_line(exc: ConfigError, config_path: Optional[Path]) -> str:
    """The one line for a bad config, masked like every other output (a value may hold the key)."""
    return agent_log.Masker([configured_key(config_path)])(f"Configuration error: {exc}")


LOCK_FILE = "ib_data_agent.lock"  # held (an OS file lock) while the agent runs: one agent per data folder
PID_FILE = "ib_data_agent.pid"  # beside it: who holds it, for the second agent's message


def lock_data_folder(data_dir: Path) -> Tuple[Optional[filelock.FileLock], Optional[str]]:
    """(the held lock, None), or (None, the one line to print) when another agent runs on this folder.

    Two agents on one folder would both place orders for the same cloud and share one audit log and
    request-id store: refused. The lock is the OS's (fcntl / Windows locking), so it dies with its
    process: a crash or kill -9 leaves no stale lock behind. A file system without such locks is
    refused too (fail closed) rather than run unguarded.
    """
    lock = filelock.FileLock(
        str(data_dir / LOCK_FILE), timeout=0, thread_local=False, fallback_to_soft=False, preserve_lock_file=True
    )
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = "another IB Data Agent"
        with contextlib.suppress(OSError, ValueError):
            pid = int((data_dir / PID_FILE).read_text(encoding="ascii").split()[0])
            holder = f"another IB Data Agent (pid {pid})"
        return None, (
            f"{holder} is already running with the data folder {data_dir}. Stop that one first "
            "(close its window, or end that process), or give this one its own AGENT_DATA_DIR. "
            "This one exits without doing anything."
        )
    except OSError as exc:
        return None, (
            f"cannot lock the data folder {data_dir} ({exc.strerror or exc}); the agent needs a "
            "folder on a local disk it can write (AGENT_DATA_DIR)"
        )
    try:
        tmp = data_dir / (PID_FILE + ".tmp")
        tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
        os.replace(tmp, data_dir / PID_FILE)
    except OSError as exc:  # the lock holds all the same; only the second agent's message is poorer
        print(f"Warning: cannot write {data_dir / PID_FILE} ({exc.strerror or exc})", file=sys.stderr)
    return lock, None


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ib_data_agent.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", metavar="PATH", type=Path, help="config file to read instead of config.env next to this script"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the set-up (TWS, account, market data, cloud), print a checklist and exit",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="try the agent without Interactive Brokers: fake TWS and cloud on this computer",
    )
    parser.add_argument("--version", action="version", version=f"IB Data Agent {__version__}")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.check:
        from agent import doctor as agent_doctor

        return agent_doctor.run(args.config, agent_version=__version__)
    if args.demo:
        from agent import demo as agent_demo

        return agent_demo.run()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(config_error_line(exc, args.config), file=sys.stderr)
        return EXIT_CONFIG
    folder_lock, problem = lock_data_folder(config.data_dir)  # before the log file: it is the first agent's
    if problem:
        print(f"Not started: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    agent_log.setup([config.key], config.log_level, config.log_file)  # from here on, crashes are logged masked
    stopping = handle_stop_signals()
    log.info("IB Data Agent %s starting", __version__)
    try:
        return Agent(config, stopping).run()
    finally:
        folder_lock.release()


if __name__ == "__main__":
    sys.exit(main())
