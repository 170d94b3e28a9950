"""The TWS protocol versions the agent offers are the ones its tests cover (DESIGN.md 3, 5.1).

The agent offers `v100..TESTED_MAX_SERVER_VERSION` and TWS picks the highest it supports, so a
newer pinned ibapi must never raise what users speak without the tests below running at it.
"""
import socket
import struct
import threading
import unittest

from ibapi.server_versions import MAX_CLIENT_VER, MIN_CLIENT_VER

import ib_connection
from agent_config import Config
from ib_connection import TESTED_MAX_SERVER_VERSION, IBConnection, _TwsSession


class OfferedVersions(unittest.TestCase):
    def test_the_pinned_ibapi_offers_nothing_above_the_tested_maximum(self):
        self.assertLessEqual(
            MAX_CLIENT_VER, TESTED_MAX_SERVER_VERSION,
            f"ibapi now speaks up to {MAX_CLIENT_VER}: run the version matrix at it (tests/fake_tws serves "
            f"ibapi's maximum), then raise ib_connection.TESTED_MAX_SERVER_VERSION")

    def test_the_tested_maximum_is_one_ibapi_can_decode(self):
        self.assertGreaterEqual(MAX_CLIENT_VER, TESTED_MAX_SERVER_VERSION)

    def test_the_handshake_offers_exactly_v100_to_the_tested_maximum(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        received = []

        def tws():
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(5)
                data = b""
                while len(data) < 8 or len(data) < 8 + struct.unpack(">I", data[4:8])[0]:
                    chunk = peer.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                received.append(data)

        thread = threading.Thread(target=tws, daemon=True)
        thread.start()
        config = Config(key="k", ib_port=listener.getsockname()[1])
        session = _TwsSession(IBConnection(config), "127.0.0.1", listener.getsockname()[1], 17)
        session.open(connect_timeout=1.0, handshake_timeout=0.5)  # nobody answers: it gives up
        thread.join(5)
        offer = f"v{MIN_CLIENT_VER}..{TESTED_MAX_SERVER_VERSION}".encode()
        self.assertEqual(received, [b"API\0" + struct.pack(">I", len(offer)) + offer])
        self.assertEqual(ib_connection.MIN_CLIENT_VER, 100)


if __name__ == "__main__":
    unittest.main()
