"""The TWS protocol versions the agent offers are the ones its tests cover (DESIGN.md 3, 5.1).

The agent offers `v100..TESTED_MAX_SERVER_VERSION` and TWS picks the highest it supports, so a
newer pinned ibapi must never raise what users speak without the tests below running at it.
"""

import socket
import struct
import threading
import unittest

from ibapi.server_versions import MAX_CLIENT_VER, MIN_CLIENT_VER

from agent.config import Config
from agent.ib import session as ib_session
from agent.ib.connection import IBConnection
from agent.ib.session import TESTED_MAX_SERVER_VERSION, _TwsSession
from tests.test_orders_e2e import OrdersEndToEnd
from tests.tws_versions import MATRIX, at_tws_versions


class OfferedVersions(unittest.TestCase):
    def test_the_pinned_ibapi_offers_nothing_above_the_tested_maximum(self):
        self.assertLessEqual(
            MAX_CLIENT_VER,
            TESTED_MAX_SERVER_VERSION,
            f"ibapi now speaks up to {MAX_CLIENT_VER}: run the version matrix at it (tests/fake_tws serves "
            f"ibapi's maximum), then raise ib_session.TESTED_MAX_SERVER_VERSION",
        )

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
        self.assertEqual(ib_session.MIN_CLIENT_VER, 100)  # the lowest version the agent offers


class EveryOfferedVersion(OrdersEndToEnd):
    """DESIGN.md 3: whatever version a user's TWS picks in the offered range works end to end. Runs
    at 176 (an older TWS), 200 (last text-only), 203 (first protobuf orders) and the newest."""

    tws_versions = MATRIX

    def test_status_orders_prices_and_account_reads(self):
        version = self.expected_server_version
        self.assertEqual(self.ok("status")["server_version"], version)

        market = self.tws.market
        stock_price = market.quote(market.stocks["AAPL"]).bid
        stock = {
            "contract": {"ticker": "AAPL", "sec_type": "STK"},
            "action": "BUY",
            "quantity": 1,
            "order_type": "LMT",
            "limit_price": round(stock_price * 0.5, 2),
        }
        for name, params in (("stock", stock), ("option", self.order())):
            with self.subTest(name):
                placed = self.ok("place-order", params, id=f"{name}-{version}")
                self.assertIn(placed["status"], ("PreSubmitted", "Submitted"))
                listed = [o for o in self.ok("open-orders")["orders"] if o["order_id"] == placed["order_id"]]
                self.assertEqual([o["contract"]["sec_type"] for o in listed], [params["contract"]["sec_type"]])
                cancelled = self.ok("cancel-order", {"order_id": placed["order_id"]}, id=f"cancel-{name}-{version}")
                self.assertEqual(cancelled, {"order_id": placed["order_id"], "status": "Cancelled"})
        self.assertEqual(self.placed(), 2)
        self.assertEqual(
            [(line["action"], line["decision"], (line["contract"] or {}).get("sec_type")) for line in self.audit()],
            [
                ("place-order", "allowed", "STK"),
                ("cancel-order", "allowed", None),
                ("place-order", "allowed", "OPT"),
                ("cancel-order", "allowed", None),
            ],
        )

        listed = [o for o in market.options("AAPL") if market.quote(o).bid > 0][:5]
        prices = self.ok(
            "fetch-prices",
            {
                "contracts": [
                    {"ticker": o.symbol, "expiration": o.expiry, "strike": o.strike, "right": o.right} for o in listed
                ]
            },
        )
        self.assertEqual(
            [(p["strike"], p["error"], p["complete"]) for p in prices["options"]],
            [(o.strike, None, True) for o in listed],
        )
        self.assertTrue(all(p["bid"] and p["ask"] and p["delta"] is not None for p in prices["options"]))

        positions = self.ok("positions")["positions"]
        self.assertIn(("AAPL", "STK", 100), {(p["ticker"], p["sec_type"], p["quantity"]) for p in positions})
        self.assertGreater(self.ok("account-summary")["accounts"]["DU1234567"]["net_liquidation"], 0)
        self.assertEqual(self.ok("open-orders")["orders"], [])


load_tests = at_tws_versions()

if __name__ == "__main__":
    unittest.main()
