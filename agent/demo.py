"""`./start_unix.sh --demo` (`python ib_data_agent.py --demo`): the agent at work, without Interactive Brokers.

Starts the test doubles that stand in for TWS (tests/fake_tws.py, a made-up market) and for the MA
Tracker cloud (tests/fake_relay.py), then the agent itself as a user runs it, pointed at both. It asks
the agent for an option chain the way the web app does, prints the chain as a table, and stops all
three. Everything stays on 127.0.0.1 and the user's config.env is not read: the demo uses its own key.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import signal
import sys
import threading
import time
from typing import Dict, List, Optional, TextIO, Tuple

from agent.config import AGENT_DIR
from agent.ib.scanner import days_to, underlying_price
from agent.log import plural

DEMO_KEY = "demo-key-not-a-secret"
DEMO_TICKER = "AAPL"
STRIKES_AROUND = 6
START_TIMEOUT_S = 30.0  # each process until it is listening / connected
REQUEST_TIMEOUT_S = 60.0
POLL_S = 0.2
AGENT_LINE_WAIT_S = 2.0
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
# What the demo runs besides the agent; tools/build_release.py ships these in every zip.
DEMO_FILES = (
    "tests/__init__.py",
    "tests/agent_process.py",
    "tests/fake_relay.py",
    "tests/fake_tws.py",
    "tests/fake_tws_session.py",
    "tests/fake_tws_account.py",
    "tests/fake_tws_wire.py",
    "tests/fake_tws_framing.py",
    "tests/fake_tws_formats.py",
    "tests/fake_tws_requests.py",
    "tests/fake_tws_proto.py",
    "tests/fake_tws_proto_requests.py",
    "tests/fake_market.py",
    "tests/fake_listings.py",
    "tests/fake_account.py",
)
NO_AIOHTTP = (
    "The demo needs aiohttp (the fake MA Tracker cloud is built on it); the agent itself does "
    "not, so a normal install leaves it out. Start the demo with ./start_unix.sh --demo, which "
    "installs it, or install it into the Python that runs the agent:  python -m pip install aiohttp"
)

# The chain table: a column per figure, calls left of the strike and puts right of it.
SIDE_COLUMNS = (("bid", 8, "{:.2f}"), ("ask", 8, "{:.2f}"), ("delta", 8, "{:+.3f}"))
STRIKE_WIDTH = 10


class DemoError(Exception):
    """What went wrong, in one line for the newcomer."""


def missing_requirement() -> Optional[str]:
    """Why the demo cannot run in this copy of the agent, or None."""
    absent = [name for name in DEMO_FILES if not (AGENT_DIR / name).is_file()]
    if absent:
        return (
            f"This copy of the agent has no demo files ({', '.join(absent)}). "
            "Download the agent again from the MA Tracker web app."
        )
    try:
        import aiohttp  # noqa: F401  (only checked for: the fake relay process imports it)
    except ImportError:
        return NO_AIOHTTP
    return None


# --- the table -------------------------------------------------------------------------------------


def _cell(value, width: int, form: str) -> str:
    return ("-" if value is None else form.format(value)).rjust(width)


def _side(option: Optional[dict]) -> str:
    return "".join(_cell((option or {}).get(name), width, form) for name, width, form in SIDE_COLUMNS)


def chain_table(data: dict, today: Optional[dt.date] = None) -> str:
    """A fetch-chain answer as text: one block per expiration, strikes down the middle, calls left,
    puts right, a line where the underlying price falls."""
    today = today or dt.date.today()
    underlying = data["underlying"]
    price = underlying_price(underlying)
    side_width = sum(width for _, width, _ in SIDE_COLUMNS)
    heading = "".join(name.rjust(width) for name, width, _ in SIDE_COLUMNS)
    kind = underlying.get("market_data_type") or "no"
    lines = [
        f"{data['ticker']} underlying {_cell(price, 0, '{:.2f}').strip()} "
        f"(bid {_cell(underlying.get('bid'), 0, '{:.2f}').strip()} / "
        f"ask {_cell(underlying.get('ask'), 0, '{:.2f}').strip()}, {kind} data), "
        f"{plural(len(data['options']), 'option')} in {data.get('elapsed_ms', 0) / 1000:.1f} s"
    ]
    for expiration in data["expirations"]:
        rows: Dict[float, Dict[str, dict]] = {}
        for option in data["options"]:
            if option["expiration"] == expiration:
                rows.setdefault(option["strike"], {})[option["right"]] = option
        lines += [
            "",
            f"Expiration {expiration[:4]}-{expiration[4:6]}-{expiration[6:]} "
            f"({plural(days_to(expiration, today), 'day')})",
            "CALLS".center(side_width) + " " * STRIKE_WIDTH + "PUTS".center(side_width),
            heading + "STRIKE".rjust(STRIKE_WIDTH - 1) + " " + heading,
        ]
        decimals = max((len(f"{strike:g}".partition(".")[2]) for strike in rows), default=0)
        marked = price is None
        for strike in sorted(rows):
            if not marked and strike > price:
                lines.append(f" {data['ticker']} {price:.2f} ".center(2 * side_width + STRIKE_WIDTH, "-"))
                marked = True
            lines.append(
                _side(rows[strike].get("C"))
                + f"{strike:.{decimals}f}".rjust(STRIKE_WIDTH - 1)
                + " "
                + _side(rows[strike].get("P"))
            )
    return "\n".join(line.rstrip() for line in lines)


# --- the run ---------------------------------------------------------------------------------------


def _ib_connected(relay_status: dict) -> bool:
    latest = relay_status.get("status") or relay_status.get("hello") or {}
    return bool(relay_status.get("connected") and (latest.get("ib") or {}).get("connected"))


def _wait_connected(relay, agent) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ib_connected(relay.status()):
        if agent.process.poll() is not None:
            raise DemoError(f"the agent stopped (exit code {agent.process.returncode})")
        if time.monotonic() > deadline:
            raise DemoError(f"the agent did not connect to both fakes within {START_TIMEOUT_S:g} s")
        time.sleep(POLL_S)


def _ask(relay, action: str, params: dict) -> dict:
    try:
        response = relay.request(action, params, timeout_s=REQUEST_TIMEOUT_S)
    except (relay.Error, OSError) as exc:
        raise DemoError(f"the fake cloud could not pass the {action} request to the agent: {exc}") from None
    if not response.get("ok"):
        error = response.get("error") or {}
        raise DemoError(f"the agent answered {action} with {error.get('code')}: {error.get('message')}")
    return response["data"]


def _say(out: TextIO, text: str = "", end: str = "\n") -> None:
    print(text, end=end, file=out, flush=True)


def _show_agent_lines(out: TextIO, agent, already: int) -> int:
    lines = agent.stdout.lines[already:] if agent.stdout else []
    for line in lines:
        _say(out, "  | " + line.rstrip())
    return already + len(lines)


class _Processes:
    """The processes the demo started, and the stop signals around them.

    Ctrl-C and SIGTERM end the demo through stop_all(). While a process starts they are held and
    raised once it is on the list (an interrupt inside Popen would leave a process nobody stops);
    once stop_all() began they are only noted, so every process is stopped.
    """

    def __init__(self):
        self.started: List[Tuple[str, object]] = []
        self._holding = False
        self._pending = False

    def on_signal(self, signum, frame) -> None:
        if self._holding:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def stop_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
            yield
            return
        previous = {signum: signal.signal(signum, self.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self, name: str, process, *args):
        """process.start(*args), its result; DemoError when it does not come up in time."""
        self._holding = True
        try:
            self.started.append((name, process))
            return process.start(*args)
        except TimeoutError:
            raise DemoError(f"{name} did not start") from None
        finally:
            self._holding = False
            if self._pending:
                raise KeyboardInterrupt

    def stop_all(self) -> List[str]:
        """Newest first (the agent before the fakes it talks to): SIGTERM, wait, kill when it hangs.
        Prints nothing (the screen may be gone); returns what did not stop cleanly."""
        self._holding = True
        problems = []
        for name, process in reversed(self.started):
            if process.process is None:
                continue
            code = process.stop()
            if code not in (0, -signal.SIGTERM):
                problems.append(f"{name} did not stop cleanly ({'killed' if code is None else f'exit code {code}'})")
            cleanup = getattr(process, "cleanup", None)
            if cleanup:
                cleanup()
        return problems

    def report_output(self) -> None:
        for name, process in self.started:
            if process.process is not None and process.output.strip():
                print(f"--- output of {name} (last lines) ---\n" + process.output[-3000:], file=sys.stderr)


def _demo(out: TextIO, processes: _Processes) -> None:
    from tests.agent_process import AgentProcess, RelayClient, ServerProcess

    _say(out, "Starting the fake TWS ............... ", end="")
    tws_port = processes.start("the fake TWS", ServerProcess("tests.fake_tws", cwd=AGENT_DIR), START_TIMEOUT_S)
    _say(out, f"port {tws_port}, paper account DU1234567")
    _say(out, "Starting the fake MA Tracker cloud .. ", end="")
    relay_port = processes.start(
        "the fake cloud", ServerProcess("tests.fake_relay", ["--key", DEMO_KEY], cwd=AGENT_DIR), START_TIMEOUT_S
    )
    relay = RelayClient(relay_port, DEMO_KEY)
    _say(out, relay.url)
    _say(out, "Starting the agent .................. ", end="")
    agent = AgentProcess(DEMO_KEY, relay.url, tws_port, cwd=AGENT_DIR)
    processes.start("the agent", agent)
    _wait_connected(relay, agent)
    _say(out, "connected to both. The agent says:")
    shown = _show_agent_lines(out, agent, 0)

    _say(
        out,
        f"\nThe web app asks the agent for the {DEMO_TICKER} option chain (nearest expiration, "
        f"{STRIKES_AROUND} strikes each side of the price):",
    )
    expirations = _ask(relay, "expirations", {"ticker": DEMO_TICKER})["expirations"]
    if not expirations:
        raise DemoError(f"the fake TWS lists no {DEMO_TICKER} expirations")
    chain = _ask(
        relay, "fetch-chain", {"ticker": DEMO_TICKER, "expirations": expirations[:1], "strikes_around": STRIKES_AROUND}
    )
    with contextlib.suppress(TimeoutError):  # the agent writes its line about a request just after answering
        agent.wait_for_output(r"request fetch-chain", timeout=AGENT_LINE_WAIT_S)
    _show_agent_lines(out, agent, shown)
    _say(out, "\n" + chain_table(chain) + "\n")


def run(out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    problem = missing_requirement()
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_FAILED
    _say(
        out,
        "IB Data Agent demo: a fake TWS with a made-up market, a fake MA Tracker cloud and the agent, "
        "all on this computer (no Interactive Brokers account needed).\n",
    )
    processes = _Processes()
    code = EXIT_OK
    with processes.stop_signals():
        try:
            _demo(out, processes)
        except DemoError as exc:
            _say(out)
            print(f"The demo failed: {exc}", file=sys.stderr)
            processes.report_output()
            code = EXIT_FAILED
        except KeyboardInterrupt:
            _say(out, "\nInterrupted.")
            code = EXIT_INTERRUPTED
        finally:
            problems = processes.stop_all()
    _say(out, "Stopped the agent and the fakes" + (f"; {'; '.join(problems)}." if problems else "."))
    return EXIT_FAILED if code == EXIT_OK and problems else code


def main(argv: Optional[List[str]] = None) -> int:
    argparse.ArgumentParser(prog="python -m agent.demo", description=__doc__.splitlines()[0]).parse_args(argv)
    return run()


if __name__ == "__main__":
    sys.exit(main())
