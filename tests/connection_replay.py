"""The replay fixture of the TWS connection tests (test_ib_connection, test_ib_requests): an IBConnection
whose session is fed recorded callback sequences (tests/recorded/connection_callbacks.json) over a
stand-in socket. Also the CONFIG and WAIT_S the tests against tests.fake_tws share."""

import json
import threading
from decimal import Decimal
from pathlib import Path

from ibapi.common import TickAttrib
from ibapi.contract import Contract, ContractDetails
from ibapi.execution import Execution

from agent.config import Config
from agent.ib.connection import IBConnection
from agent.ib.session import _TwsSession

RECORDED = json.loads((Path(__file__).parent / "recorded" / "connection_callbacks.json").read_text())
TAGGED = {"Contract": Contract, "ContractDetails": ContractDetails, "TickAttrib": TickAttrib, "Execution": Execution}
CONFIG = Config(key="test-key")
WAIT_S = 10.0


def decode(value, req_id):
    """Recorded JSON -> the objects ibapi passes: tagged dicts become ibapi objects, "$id" the id."""
    if value == "$id":
        return req_id
    if isinstance(value, list):
        return [decode(v, req_id) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "Decimal":
            return Decimal(body)
        obj = TAGGED[tag]()
        for name, field in body.items():
            setattr(obj, name, decode(field, req_id))
        return obj
    return value


def replay(session, sequence, req_id=None):
    for name, args in RECORDED[sequence]:
        getattr(session, name)(*decode(args, req_id))


class Recorder:
    """A registry handler that keeps everything it is told."""

    def __init__(self):
        self.events, self.errors, self.disconnects = [], [], 0

    def on_event(self, name, args):
        self.events.append((name, args))

    def on_error(self, ib_code, text):
        self.errors.append((ib_code, text))

    def on_disconnect(self):
        self.disconnects += 1


class FakeSocket:
    def __init__(self):
        self.sent = []

    def isConnected(self):
        return True

    def sendMsg(self, msg):
        self.sent.append(msg)
        return len(msg)

    def disconnect(self):
        pass


def connected(config=CONFIG, sequence="handshake", account_type="paper"):
    """An IBConnection whose current session got `sequence` (a stand-in socket records what is sent)."""
    changes = []
    conn = IBConnection(config, on_change=lambda: changes.append(conn.status()))
    session = _TwsSession(conn, config.ib_host, 7497, config.ib_client_id)
    session.conn, session.serverVersion_ = FakeSocket(), 176
    session.setConnState(session.CONNECTED)
    replay(session, sequence)
    assert conn._go_ready(session, account_type)
    return conn, session, changes


class Serving:
    """Runs the supervisor's serve loop for a session (resubscribe and drop handling)."""

    def __init__(self, conn, session):
        self.conn = conn
        self.thread = threading.Thread(target=conn._serve, args=(session,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.conn._control.put(("stop", None))
        self.thread.join(WAIT_S)
