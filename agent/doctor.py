"""`python ib_data_agent.py --check`: a set-up checklist a trader can read and act on.

Most support questions are about TWS settings, so the agent checks them itself: one line per check,
OK, WARN or FAIL (SKIP when an earlier failure makes a check meaningless), and under every WARN and
FAIL the fix from the README's Troubleshooting. It connects to TWS and to the cloud briefly, the way
the agent does, and serves nothing. Exit 0 when nothing failed (warnings allowed), 1 when a check
failed, 2 when the configuration is invalid (as a normal start).

Judgement calls: delayed market data is a WARN, not a FAIL (with MARKET_DATA_TYPE=auto the agent
works with it; the prices are only 15-20 minutes old). A client id in use is a WARN when one of the
spare ids worked (the agent does the same), a FAIL when all of them are taken.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import websocket

from agent import MIN_PYTHON
from agent import log as agent_log
from agent.config import DEFAULT_CONFIG_FILE, Config, ConfigError, configured_key, load_config
from agent.errors import MARKET_DATA_NOT_SUBSCRIBED, TIMEOUT, AgentError
from agent.ib.codes import CLIENT_ID_IN_USE, is_read_only_error
from agent.ib.connection import IBConnection
from agent.ib.ports import PortProbe, account_type, candidate_ports, resolve_port
from agent.ib.requests import ORDERS, Request
from agent.ib.scanner import Scanner, days_to
from agent.log import Masker
from agent.relay.link import relay_headers
from agent.relay.tls import tls_context

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"

CONNECT_TIMEOUT_S = 2.0  # TCP connect to one port (a closed port on this computer answers at once)
API_TIMEOUT_S = 6.0  # API handshake on one port: accounts and first order id
ANSWER_TIMEOUT_S = 5.0  # one answer from TWS: open orders, contract details, one quote
RELAY_TIMEOUT_S = 5.0  # WebSocket connect and upgrade
SAMPLE_TICKER = "SPY"  # a sample underlying every US market-data subscription covers

PYTHON_CHECK = "Python"
CONFIG, TWS, API, ACCOUNT, READ_ONLY, MARKET_DATA, RELAY = (
    "Config",
    "TWS / IB Gateway",
    "API connection",
    "Account type",
    "Read-Only API",
    "Market data",
    "MA Tracker cloud",
)
PORT_NAMES = {7497: "TWS paper", 7496: "TWS live", 4002: "IB Gateway paper", 4001: "IB Gateway live"}

# The fixes, in the README's Troubleshooting words.
FIX_PYTHON = (
    "Install Python %d.%d or newer (README.md, Requirements), delete the .venv folder in the agent "
    "folder, and start the agent again" % MIN_PYTHON,
)
FIX_CONFIG = (
    "Correct that value in config.env (README.md, Configuration, lists every variable), then run the check again",
)
FIX_TWS = (
    "Make sure IB TWS or Gateway is running and logged in",
    "Check Enable ActiveX and Socket Clients is checked (File > Global Configuration > API > Settings)",
    "Verify the port: TWS uses 7497 for paper and 7496 for live; IB Gateway 4002 / 4001. If you set "
    "IB_PORT in config.env, it must match the port shown in TWS",
    "Try restarting TWS - API setting changes sometimes require a restart to take effect",
)
FIX_API = (
    "Answer any dialog open in TWS (e.g. 'Accept incoming connection'), and add 127.0.0.1 to Trusted IP "
    "Addresses (File > Global Configuration > API > Settings)",
    "Check Enable ActiveX and Socket Clients is checked",
    "Try restarting TWS - API setting changes sometimes require a restart to take effect",
)
FIX_CLIENT_ID = (
    "Other programs (or other copies of the agent) are connected to TWS with those client ids: close "
    "them, or set IB_CLIENT_ID in config.env to a free id",
)
FIX_CLIENT_ID_SPARE = (
    "Nothing to do if that other program is expected: the agent uses the next free id, as this check "
    "did. Is a second copy of the agent running? To choose the id, set IB_CLIENT_ID in config.env",
)
FIX_MODE = {
    "paper": (
        "Log TWS or IB Gateway in to your paper trading account (its id starts with DU)",
        "or, to use the live account on purpose, set IB_MODE=live in config.env",
    ),
    "live": (
        "Log TWS or IB Gateway in to your live account",
        "or, to use the paper account, set IB_MODE=paper in config.env",
    ),
}
FIX_READ_ONLY = (
    "Uncheck Read-Only API in TWS (File > Global Configuration > API > Settings)",
    "IB enables Read-Only by default - it blocks order placement and order info; market data and "
    "positions still work, so the agent may appear healthy",
    "Click Apply, and restart the agent",
)
FIX_DELAYED = (
    "Nothing to do if delayed prices are enough: the agent uses them where you have no subscription "
    "(MARKET_DATA_TYPE=auto)",
    "For live prices, subscribe to US stock and options (OPRA) market data in IB Account Management",
)
FIX_NOT_SUBSCRIBED = (
    "Subscribe to US stock and options (OPRA) market data in IB Account Management",
    "or set MARKET_DATA_TYPE=auto in config.env to use delayed prices where you have no subscription",
)
FIX_NO_PRICES = (
    "Outside US market hours TWS may have no prices: run the check again while the market is open",
    "Check your market-data subscriptions (US stocks and OPRA options) in IB Account Management",
)
FIX_AUTH = ("Your API key may have been regenerated. Download a fresh copy of the agent from the MA Tracker web app.",)
FIX_RELAY = (
    "Check your internet connection",
    "The cloud server may be temporarily unavailable: run the check again in a few minutes",
    "Starting the agent anyway is fine: it retries automatically",
)


class Checklist:
    """Prints each finding as soon as it is known, masked, and counts them."""

    def __init__(self, out: TextIO, masker: Masker):
        self._out = out
        self._mask = masker
        self.counts: Counter = Counter()

    def add(self, status: str, title: str, text: str, details: Sequence[str] = (), fix: Sequence[str] = ()) -> None:
        self.counts[status] += 1
        lines = [f"{status:<4}  {title}: {text}"] + [f"      {d}" for d in details]
        numbered = [f"{n}. {f}" for n, f in enumerate(fix, 1)] if len(fix) > 1 else list(fix)
        lines += [("      Fix: " if n == 0 else "           ") + f for n, f in enumerate(numbered)]
        self.print("\n".join(lines))

    def skip(self, titles: Sequence[str], why: str) -> None:
        for title in titles:
            self.add(SKIP, title, f"not checked ({why})")

    def print(self, text: str) -> None:
        print(self._mask(text), file=self._out, flush=True)

    def finish(self, failed_code: int = EXIT_FAILED) -> int:
        failed, warned = self.counts[FAIL], self.counts[WARN]
        if failed:
            self.print(
                f"\n{failed} check(s) failed{f', {warned} warning(s)' if warned else ''}: "
                "fix the FAIL lines above, then run the check again."
            )
            return failed_code
        self.print(f"\nAll checks passed{f' ({warned} warning(s): see above)' if warned else ''}.")
        return EXIT_OK


def check_python(
    checklist: Checklist, version_info: Sequence[int] = tuple(sys.version_info), executable: str = sys.executable
) -> None:
    """The Python running the agent, against the floor the start scripts enforce."""
    version = ".".join(str(n) for n in version_info[:3])
    if tuple(version_info[:2]) >= MIN_PYTHON:
        checklist.add(OK, PYTHON_CHECK, f"{version} ({executable})")
    else:
        checklist.add(
            FAIL,
            PYTHON_CHECK,
            f"{version} is too old: the agent needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer ({executable})",
            fix=FIX_PYTHON,
        )


# --- TWS / IB Gateway ------------------------------------------------------------------------------

NOT_LISTENING = "not listening"


@dataclass
class _Port:
    """What one candidate port answered: the open, ready connection, or why there is none."""

    port: int
    failure: Optional[str] = None
    conn: Optional[IBConnection] = None
    accounts: Tuple[str, ...] = ()
    client_id: Optional[int] = None

    @property
    def listening(self) -> bool:
        return self.failure != NOT_LISTENING

    @property
    def name(self) -> str:
        known = PORT_NAMES.get(self.port)
        return f"port {self.port}" + (f" ({known})" if known else "")

    def probe(self) -> PortProbe:
        """For agent.ib.ports.resolve_port: the same decision the agent takes."""
        return PortProbe(self.port, accounts=self.accounts, failure=self.failure)

    def describe(self) -> str:
        if self.failure:
            return f"{self.name}: {self.failure}"
        return f"{self.name}: {', '.join(self.accounts)}, {account_type(self.accounts)} account"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _open_api(config: Config, port: int) -> _Port:
    """Connect as the agent would (client id, spare ids on 326) to exactly this port, any account."""
    if not _listening(config.ib_host, port):
        return _Port(port, NOT_LISTENING)
    changed = threading.Event()
    conn = IBConnection(
        replace(config, ib_port=port, ib_mode_explicit=False),
        on_change=changed.set,
        connect_timeout=CONNECT_TIMEOUT_S,
        handshake_timeout=API_TIMEOUT_S,
    )
    conn.start()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S + API_TIMEOUT_S + 1.0
    while not conn.ready and not conn.status()["error"] and time.monotonic() < deadline:
        changed.wait(0.1)
        changed.clear()
    status = conn.status()
    if conn.ready:
        return _Port(port, conn=conn, accounts=tuple(status["accounts"]), client_id=status["client_id"])
    conn.stop()
    error = status["error"] or f"TWS did not complete the API connection within {API_TIMEOUT_S:g} s"
    return _Port(
        port, error.split(f"port {port}: ", 1)[-1]
    )  # "Failed to connect to IB TWS: port N: why": describe() names it


def check_tws(config: Config, checklist: Checklist, candidates: Optional[Dict[str, Sequence[int]]] = None) -> None:
    """Checks 2 to 6; every connection is closed before it returns."""
    ports: List[_Port] = []
    try:
        for port in candidate_ports(config.ib_port, config.ib_mode, candidates):
            ports.append(_open_api(config, port))
        conn = _choose_port(config, checklist, ports, candidates)
        if conn is not None:
            check_read_only(conn, checklist)
            check_market_data(conn, config, checklist)
    finally:
        for found in ports:
            if found.conn is not None:
                found.conn.stop()


def _choose_port(
    config: Config, checklist: Checklist, ports: List[_Port], candidates: Optional[Dict[str, Sequence[int]]]
) -> Optional[IBConnection]:
    """Checks 2, 3 and 4; the connection on the port the agent would use, or None."""
    details = [
        f"{p.name}: listening (see API connection)" if p.listening and p.failure else p.describe() for p in ports
    ]
    listening = [p for p in ports if p.listening]
    if not listening:
        where = ", ".join(p.name for p in ports)
        checklist.add(FAIL, TWS, f"nothing answers on {config.ib_host} {where}", fix=FIX_TWS)
        checklist.skip((API, ACCOUNT, READ_ONLY, MARKET_DATA), "no TWS / IB Gateway found")
        return None
    checklist.add(OK, TWS, "listening on " + ", ".join(p.name for p in listening), details)

    accepted = [p for p in listening if p.conn is not None]
    if not accepted:
        failures = [p.describe() for p in listening]
        all_ids_busy = all(f"error {CLIENT_ID_IN_USE}" in p.failure for p in listening)
        checklist.add(
            FAIL,
            API,
            "TWS did not accept the agent's API connection",
            failures,
            FIX_CLIENT_ID if all_ids_busy else FIX_API,
        )
        checklist.skip((ACCOUNT, READ_ONLY, MARKET_DATA), "no API connection")
        return None
    where = "accepted on " + ", ".join(f"{p.name} as client id {p.client_id}" for p in accepted)
    refused = [p.describe() for p in listening if p.failure]
    if any(p.client_id != config.ib_client_id for p in accepted):
        checklist.add(
            WARN,
            API,
            f"{where}: client id {config.ib_client_id} is in use in TWS (error {CLIENT_ID_IN_USE})",
            refused,
            FIX_CLIENT_ID_SPARE,
        )
    else:
        checklist.add(OK, API, where, refused)

    by_port = {p.port: p for p in ports}
    decision = resolve_port(
        config.ib_port, config.ib_mode, config.ib_mode_explicit, lambda port: by_port[port].probe(), candidates
    )
    passed_over = [line for found, line in zip(ports, decision.findings) if found.conn is not None]
    if decision.port is None:
        checklist.add(FAIL, ACCOUNT, "; ".join(passed_over), fix=FIX_MODE[config.ib_mode])
        checklist.skip((READ_ONLY, MARKET_DATA), "the agent would not use any TWS found")
        return None
    chosen = by_port[decision.port]
    accounts = ", ".join(chosen.accounts)
    if config.ib_port is not None and not config.ib_mode_explicit:
        text = (
            f"IB_PORT={decision.port}: {decision.account_type} account {accounts} "
            "(IB_MODE is not set, so the agent uses whichever account is logged in there)"
        )
    else:
        default = "" if config.ib_mode_explicit else " (the default)"
        text = (
            f"the agent will use {chosen.name}: {decision.account_type} account {accounts}, "
            f"as IB_MODE={config.ib_mode}{default} asks"
        )
    checklist.add(OK, ACCOUNT, text, passed_over)
    return chosen.conn


def check_read_only(conn: IBConnection, checklist: Checklist) -> None:
    """Check 5: TWS answers reqOpenOrders with its end, or with 321 "Read-Only" when the setting is on."""
    request = Request("reqOpenOrders", lambda name, _args: name == "openOrderEnd", claims=is_read_only_error)
    read_only: Optional[bool] = None  # unknown: no answer (or the connection lost) within the timeout
    try:
        with conn.requests.pending(ORDERS, request):
            conn.send("reqOpenOrders")
            request.wait(ANSWER_TIMEOUT_S)
        read_only = False
    except AgentError as exc:
        if request.error is not None:  # the error it claims: Read-Only API
            read_only = True
        elif request.ended_by is None and exc.code != TIMEOUT:  # not sent
            checklist.add(FAIL, READ_ONLY, f"could not ask TWS: {exc.message}", fix=FIX_TWS)
            return
    if read_only is None:
        checklist.add(
            WARN,
            READ_ONLY,
            f"TWS did not answer a request for open orders within {ANSWER_TIMEOUT_S:g} s, so the setting is unknown",
            fix=FIX_READ_ONLY,
        )
    elif read_only:
        checklist.add(
            FAIL, READ_ONLY, "on: TWS blocks order placement and order information (error 321)", fix=FIX_READ_ONLY
        )
    else:
        checklist.add(OK, READ_ONLY, "off: the agent can place orders and read them")


def _nearest_expiration(expirations: Sequence[str], today: dt.date) -> str:
    """The first expiration after today (today's may already have stopped trading)."""
    later = [e for e in expirations if days_to(e, today) >= 1]
    return (later or list(expirations))[0]


def _prices(item: dict) -> str:
    def number(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    return f"bid {number(item['bid'])} / ask {number(item['ask'])}, {item['market_data_type'] or 'no'} data"


def check_market_data(conn: IBConnection, config: Config, checklist: Checklist) -> None:
    """Check 6: the sample underlying and its nearest at-the-money call, through the agent's scanner."""
    quick = replace(
        config,
        option_timeout_s=min(config.option_timeout_s, ANSWER_TIMEOUT_S),
        request_timeout_s=min(config.request_timeout_s, ANSWER_TIMEOUT_S),
        warm_lines=0,
    )
    scanner = Scanner(conn, quick)
    try:
        listing = scanner.get_available_expirations(SAMPLE_TICKER)
        expiration = _nearest_expiration(listing["expirations"], dt.date.today())
        chain = scanner.fetch_option_chain(
            SAMPLE_TICKER, {"expirations": [expiration], "strikes_around": 1, "rights": ["C"]}
        )
    except AgentError as exc:
        fix = FIX_NOT_SUBSCRIBED if exc.code == MARKET_DATA_NOT_SUBSCRIBED else FIX_NO_PRICES
        text = exc.message if SAMPLE_TICKER in exc.message else f"{SAMPLE_TICKER}: {exc.message}"
        checklist.add(FAIL, MARKET_DATA, text, fix=fix)
        return
    finally:
        scanner.close()
    underlying = chain["underlying"]
    options = chain["options"]
    option = next((o for o in options if o["bid"] is not None or o["ask"] is not None), None)
    if option is None:
        error = next((o["error"] for o in options if o["error"]), None)
        what = error["message"] if error else f"no option prices within {quick.option_timeout_s:g} s"
        text = f"{SAMPLE_TICKER} {_prices(underlying)}; {SAMPLE_TICKER} options: {what}"
        if error and error["code"] == MARKET_DATA_NOT_SUBSCRIBED:
            checklist.add(FAIL, MARKET_DATA, text, fix=FIX_NOT_SUBSCRIBED)
        else:
            checklist.add(WARN, MARKET_DATA, text, fix=FIX_NO_PRICES)
        return
    option_name = f"{SAMPLE_TICKER} {option['expiration']} {option['strike']:g} call"
    text = f"{SAMPLE_TICKER} {_prices(underlying)}; {option_name} {_prices(option)}"
    delayed = {underlying["market_data_type"], option["market_data_type"]} & {"delayed", "delayed-frozen"}
    if delayed and config.market_data_type not in ("delayed", "delayed-frozen"):
        checklist.add(
            WARN, MARKET_DATA, text + " (no live subscription: prices are 15-20 minutes old)", fix=FIX_DELAYED
        )
    else:
        checklist.add(OK, MARKET_DATA, text)


# --- the cloud -------------------------------------------------------------------------------------


def check_relay(config: Config, checklist: Checklist, agent_version: str) -> None:
    """Check 7: one WebSocket upgrade with the key, closed at once (no hello, nothing served)."""
    headers = relay_headers(config.key, agent_version)
    context, _roots = tls_context()  # the agent's own: certifi's roots when this Python build has none
    try:
        ws = websocket.create_connection(
            config.relay_url, timeout=RELAY_TIMEOUT_S, header=headers, sslopt={"context": context}
        )
    except websocket.WebSocketBadStatusException as exc:
        if exc.status_code in (401, 403):
            checklist.add(
                FAIL,
                RELAY,
                f"Authentication failed: {config.relay_url} rejected the API key (HTTP {exc.status_code})",
                fix=FIX_AUTH,
            )
        else:
            checklist.add(
                FAIL,
                RELAY,
                f"WebSocket connection failed: {config.relay_url} answered HTTP {exc.status_code}",
                fix=FIX_RELAY,
            )
        return
    except (OSError, websocket.WebSocketException) as exc:
        # masked before the cut: a cut through the key would leave a fragment no masking recognises
        masker = Masker([config.key])
        reason = (agent_log.mask(str(exc), masker).splitlines() or [""])[0]
        reason = agent_log.clip(reason, 200, masker) or exc.__class__.__name__
        checklist.add(FAIL, RELAY, f"WebSocket connection failed: {config.relay_url} ({reason})", fix=FIX_RELAY)
        return
    with contextlib.suppress(OSError, websocket.WebSocketException):
        ws.close(timeout=1)
    checklist.add(OK, RELAY, f"connected to {config.relay_url}, API key accepted")


# --- the whole check -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_logging():
    """The checklist says it all: the connection modules' own log lines would only repeat it."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def run(
    config_path: Optional[Path] = None,
    *,
    agent_version: str = "unknown",
    candidates: Optional[Dict[str, Sequence[int]]] = None,
    environ: Optional[Mapping[str, str]] = None,
    out: Optional[TextIO] = None,
) -> int:
    """The checklist; `candidates` replaces agent.ib.ports.CANDIDATE_PORTS (tests), `environ` os.environ."""
    out = out or sys.stdout
    with _quiet_logging():
        print(f"IB Data Agent set-up check ({config_path or DEFAULT_CONFIG_FILE})", file=out, flush=True)
        try:
            config = load_config(config_path, environ)
        except ConfigError as exc:
            checklist = Checklist(out, Masker([configured_key(config_path, environ)]))
            check_python(checklist)
            checklist.add(FAIL, CONFIG, str(exc), fix=FIX_CONFIG)
            checklist.skip((TWS, API, ACCOUNT, READ_ONLY, MARKET_DATA, RELAY), "the configuration is invalid")
            return checklist.finish(EXIT_CONFIG)
        checklist = Checklist(out, Masker([config.key]))
        check_python(checklist)
        where = f"IB_PORT={config.ib_port}" if config.ib_port is not None else f"IB_MODE={config.ib_mode}"
        checklist.add(
            OK,
            CONFIG,
            f"valid ({where} on {config.ib_host}, client id {config.ib_client_id}, "
            f"MARKET_DATA_TYPE={config.market_data_type}, ALLOW_ORDERS={config.allow_orders})",
        )
        check_tws(config, checklist, candidates)
        check_relay(config, checklist, agent_version)
        return checklist.finish()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.doctor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", metavar="PATH", type=Path, help="config file to read instead of config.env next to the agent"
    )
    args = parser.parse_args(argv)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
