"""The console a trader reads (DESIGN.md 5.4, issue 18): an order line names the whole order, its
decision and its outcome; a request running longer than 10 s says how far it is every 10 s;
counts and sentences as a trader writes them; a failed request names its ticker and why; an
unknown symbol is NO_SECURITY_DEFINITION for that ticker. Unit tests of each line's maker, then the
agent's real output end to end (a process against the fake TWS and the fake relay)."""

from __future__ import annotations

import re
import time
import types
import unittest

from agent.errors import NO_SECURITY_DEFINITION, AgentError, Cancelled, NoSecurityDefinition, RequestTimeout
from agent.log import plural
from agent.orders.desk import describe_order
from agent.relay import link as relay_link
from agent.relay.actions import ACTIONS, RequestRunner
from tests.agent_process import E2ECase

OPTION = {"ticker": "AAPL", "sec_type": "OPT", "expiration": "20270115", "strike": 200.0, "right": "C"}
# A machine count: "1 accounts", "1 contracts"... anywhere in the output.
ONE_PLURAL = re.compile(
    r"\b1 (accounts|contracts|orders|open orders|positions|quotes|expirations|candidates|"
    r"requests|messages)\b"
)


class OrderDescription(unittest.TestCase):
    def test_an_option_order_names_the_whole_contract_type_and_tif(self):
        order = {
            "action": "SELL",
            "quantity": 1,
            "contract": OPTION,
            "limit_price": 1.25,
            "order_type": "LMT",
            "tif": "DAY",
        }
        self.assertEqual(describe_order(order), "SELL 1 AAPL 20270115 200 C @ 1.25 LMT DAY")

    def test_a_stock_order_and_an_order_of_another_program_without_a_limit(self):
        stock = {
            "action": "BUY",
            "quantity": 100,
            "contract": {"ticker": "MSFT", "sec_type": "STK"},
            "limit_price": 412.5,
            "order_type": "LMT",
            "tif": "GTC",
        }
        self.assertEqual(describe_order(stock), "BUY 100 MSFT (stock) @ 412.5 LMT GTC")
        market = dict(stock, limit_price=None, order_type="MKT", tif="DAY")
        self.assertEqual(describe_order(market), "BUY 100 MSFT (stock) MKT DAY")


class Counts(unittest.TestCase):
    def test_plural(self):
        self.assertEqual(
            [plural(n, "account") for n in (0, 1, 2, 1046)], ["0 accounts", "1 account", "2 accounts", "1,046 accounts"]
        )

    def test_request_summaries_count_as_a_trader_writes(self):
        lines = {
            name: ACTIONS[name].summary(params, data)
            for name, params, data in (
                ("account-summary", {}, {"accounts": {"DU1234567": {}}}),
                ("positions", {}, {"positions": [{}]}),
                ("open-orders", {}, {"orders": [{}, {}]}),
                ("fetch-prices", {}, {"options": [{}]}),
                ("fetch-chain", {"ticker": "SPY"}, {"options": [{}] * 1046}),
                ("expirations", {"ticker": "SPY"}, {"expirations": ["20270115"]}),
                ("sell-scan", {"ticker": "SPY", "right": "P"}, {"candidates": []}),
                ("quote", {"tickers": ["AAPL"]}, {"quotes": {"AAPL": {}}}),
            )
        }
        self.assertEqual(
            lines,
            {
                "account-summary": "account-summary: 1 account",
                "positions": "positions: 1 position",
                "open-orders": "open-orders: 2 open orders",
                "fetch-prices": "fetch-prices: 1 contract",
                "fetch-chain": "fetch-chain SPY: 1,046 contracts",
                "expirations": "expirations SPY: 1 expiration",
                "sell-scan": "sell-scan SPY P: 0 candidates",
                "quote": "quote AAPL: 1 quote",
            },
        )

    def test_the_demo_table_counts_one_day_and_one_option(self):
        import datetime

        from agent import demo as agent_demo

        option = {
            "ticker": "AAPL",
            "expiration": "20260613",
            "strike": 190.0,
            "right": "C",
            "bid": 1.0,
            "ask": 1.1,
            "delta": 0.5,
            "market_data_type": "delayed",
        }
        data = {
            "ticker": "AAPL",
            "expirations": ["20260613"],
            "elapsed_ms": 800,
            "options": [option],
            "underlying": {
                "ticker": "AAPL",
                "bid": 187.5,
                "ask": 187.7,
                "last": 187.6,
                "mid": 187.6,
                "close": 186.0,
                "market_data_type": "delayed",
            },
        }
        lines = agent_demo.chain_table(data, today=datetime.date(2026, 6, 12)).splitlines()
        self.assertTrue(lines[0].endswith(", 1 option in 0.8 s"), lines[0])
        self.assertIn("Expiration 2026-06-13 (1 day)", lines)

    def test_order_requests_have_no_summary_of_their_own(self):
        """The order desk writes their one line; a second one from the runner would repeat it."""
        self.assertIsNone(ACTIONS["place-order"].summary)
        self.assertIsNone(ACTIONS["cancel-order"].summary)


class FailedRequestLine(unittest.TestCase):
    def line(self, action: str, params, error: AgentError) -> str:
        job = types.SimpleNamespace(action=action, id="req-7", params=params)
        with self.assertLogs("ib_data_agent.requests", "INFO") as logs:
            RequestRunner._log_outcome(job, ACTIONS.get(action), params, error, None, 0.1)
        return logs.output[0]

    def test_names_the_ticker_and_why(self):
        line = self.line(
            "fetch-chain",
            {"ticker": "zzzzq"},
            NoSecurityDefinition("TWS knows no stock, ETF or index ZZZZQ (USD)", 200),
        )
        self.assertEqual(
            line,
            "WARNING:ib_data_agent.requests:request fetch-chain ZZZZQ failed: TWS knows no stock, ETF "
            "or index ZZZZQ (USD) (NO_SECURITY_DEFINITION, IB error 200)",
        )

    def test_fetch_prices_names_its_tickers_and_count_and_control_characters_are_escaped(self):
        contracts = [{"ticker": "AAPL"}, {"ticker": "SPY"}, {"ticker": "AAPL"}]
        line = self.line("fetch-prices", {"contracts": contracts}, RequestTimeout("TWS did not\x1b[2J answer"))
        self.assertIn("request fetch-prices AAPL SPY (3 contracts) failed: TWS did not\\x1b[2J answer (TIMEOUT)", line)

    def test_a_cancelled_request_is_not_called_failed(self):
        self.assertEqual(
            self.line("fetch-chain", {"ticker": "SPY"}, Cancelled("cancelled")),
            "INFO:ib_data_agent.requests:request fetch-chain SPY cancelled",
        )
        self.assertEqual(
            self.line(
                "sell-scan",
                {"ticker": "SPY", "right": "P"},
                Cancelled("cancelled before it started: nothing was sent to TWS"),
            ),
            "INFO:ib_data_agent.requests:request sell-scan SPY cancelled: "
            "cancelled before it started: nothing was sent to TWS",
        )

    def test_a_quote_that_answered_says_which_tickers_failed(self):
        job = types.SimpleNamespace(action="quote", id="q", params={"tickers": ["AAPL", "ZZZZQ"]})
        data = {
            "quotes": {"AAPL": {}},
            "errors": {
                "ZZZZQ": {
                    "code": NO_SECURITY_DEFINITION,
                    "ib_code": 200,
                    "message": "TWS knows no stock, ETF or index ZZZZQ (USD)",
                }
            },
        }
        with self.assertLogs("ib_data_agent.requests", "INFO") as logs:
            RequestRunner._log_outcome(job, ACTIONS["quote"], job.params, None, data, 0.2)
        self.assertEqual(
            logs.output,
            [
                "INFO:ib_data_agent.requests:request quote AAPL ZZZZQ: 1 quote in 0.2 s; ZZZZQ failed: "
                "TWS knows no stock, ETF or index ZZZZQ (USD) (NO_SECURITY_DEFINITION)"
            ],
        )


class ProgressLine(unittest.TestCase):
    def test_one_line_per_ten_seconds_as_far_as_the_progress_frames_say(self):
        link = relay_link.RelayLink("ws://127.0.0.1:9/ws/agent", "k", "1", ["fetch-chain"], dict, lambda job: None)
        job = relay_link.Job(link, "r1", "fetch-chain", {"ticker": "spy"})
        with self.assertLogs("ib_data_agent.relay", "INFO") as logs:
            for elapsed, done in (
                (0.5, 1),
                (9.9, 40),
                (10.2, 41),
                (15.0, 300),
                (19.9, 400),
                (20.0, 412),
                (20.1, 413),
                (34.0, 900),
            ):
                link._console_progress(job, elapsed, done, 1046)
        self.assertEqual(
            logs.output,
            [
                "INFO:ib_data_agent.relay:fetch-chain SPY: 41/1046 contracts after 10 s",
                "INFO:ib_data_agent.relay:fetch-chain SPY: 412/1046 contracts after 20 s",
                "INFO:ib_data_agent.relay:fetch-chain SPY: 900/1046 contracts after 30 s",
            ],
        )


class ConsoleEndToEnd(E2ECase):
    """One agent process; each test reads the lines its requests added to the agent's console."""

    wait_for_tws = True

    def request(self, action: str, params=None, **kwargs) -> dict:
        return self.stack.relay.request(action, params or {}, **kwargs)

    def ok(self, action: str, params=None, **kwargs) -> dict:
        response = self.request(action, params, **kwargs)
        self.assertTrue(response["ok"], response)
        return response["data"]

    def new_lines(self, work) -> str:
        """The console lines (stdout) written while work() ran."""
        time.sleep(0.3)  # an answer can overtake its log line: the lines of earlier work land first
        before = len(self.stack.agent.stdout.lines)
        work()
        time.sleep(0.3)
        return "".join(self.stack.agent.stdout.lines[before:])

    def test_startup_lines_read_as_sentences(self):
        text = self.stack.agent.output
        self.assertRegex(text, r"Connecting to TWS / IB Gateway on 127\.0\.0\.1 port \d+ and to the MA Tracker cloud")
        self.assertRegex(text, r"Connected to TWS on port \d+ as DU1234567 \(paper\)")

    def test_an_option_order_line_names_the_whole_contract_its_decision_and_outcome(self):
        chain = self.ok("fetch-chain", {"ticker": "AAPL", "max_days": 30, "strikes_around": 1, "rights": ["C"]})
        option = chain["options"][0]
        contract = {
            "ticker": "AAPL",
            "sec_type": "OPT",
            "expiration": option["expiration"],
            "strike": option["strike"],
            "right": "C",
        }
        named = f"SELL 1 AAPL {option['expiration']} {option['strike']:g} C @ 1.25 LMT DAY"
        order = {"contract": contract, "action": "SELL", "quantity": 1, "order_type": "LMT", "limit_price": 1.25}
        placed = {}
        text = self.new_lines(lambda: placed.update(self.ok("place-order", order)))
        self.assertEqual(text.count("\n"), 1, text)  # one line for the one order
        self.assertRegex(
            text,
            rf"^\d\d:\d\d:\d\d Order {re.escape(named)} allowed: order {placed['order_id']} "
            rf"{placed['status']}\n$",
        )
        text = self.new_lines(lambda: self.request("place-order", dict(order, quantity=100)))
        self.assertEqual(text.count("\n"), 1, text)
        self.assertIn(
            f"Warning: Order SELL 100 AAPL {option['expiration']} {option['strike']:g} C @ 1.25 LMT DAY "
            "refused: MAX_ORDER_QUANTITY=10: quantity 100 is over the limit (ORDER_BLOCKED)",
            text,
        )

    def test_a_rejection_after_acceptance_names_the_order(self):
        self.stack.tws.reject_after_accept("Your account has insufficient funds", after_s=0.2)
        order = {
            "contract": {"ticker": "MSFT", "sec_type": "STK"},
            "action": "BUY",
            "quantity": 2,
            "order_type": "LMT",
            "limit_price": 300.5,
        }
        order_id = self.ok("place-order", order)["order_id"]
        line = self.stack.agent.wait_for_output(rf"Warning: TWS rejected order {order_id} .*\n", timeout=10)[0]
        self.assertIn(
            f"TWS rejected order {order_id} (BUY 2 MSFT (stock) @ 300.5 LMT DAY) after accepting it: "
            "Order rejected - reason:Your account has insufficient funds",
            line,
        )

    def test_a_cancel_line_names_the_order_it_cancels(self):
        order = {
            "contract": {"ticker": "AAPL", "sec_type": "STK"},
            "action": "BUY",
            "quantity": 1,
            "order_type": "LMT",
            "limit_price": 100,
            "tif": "GTC",
        }
        text = self.new_lines(lambda: self.request("place-order", dict(order, quantity=-1)))
        self.assertEqual(text.count("\n"), 1, text)  # an order the params refuse: as asked, and why
        self.assertIn(
            "Warning: Order BUY -1 AAPL (stock) @ 100 LMT GTC not sent: params.quantity: must be a whole "
            "number greater than 0 (INVALID_REQUEST)",
            text,
        )
        order_id = self.ok("place-order", order)["order_id"]
        text = self.new_lines(lambda: self.ok("cancel-order", {"order_id": order_id}))
        self.assertEqual(text.count("\n"), 1, text)
        self.assertIn(f"Cancel of order {order_id} (BUY 1 AAPL (stock) @ 100 LMT GTC) allowed: Cancelled", text)

    def test_counts_read_as_a_trader_writes_them(self):
        text = self.new_lines(
            lambda: (
                self.ok("account-summary"),
                self.ok("positions"),
                self.ok("fetch-prices", {"contracts": [self.listed_option()]}),
            )
        )
        self.assertRegex(text, r"request account-summary: 1 account in \d+\.\d s\n")
        self.assertRegex(text, r"request fetch-prices AAPL \(1 contract\)|request fetch-prices: 1 contract in")
        self.assertNotRegex(self.stack.agent.output, ONE_PLURAL)

    def listed_option(self) -> dict:
        option = self.ok("fetch-chain", {"ticker": "AAPL", "max_days": 30, "strikes_around": 1, "rights": ["P"]})[
            "options"
        ][0]
        return {k: option[k] for k in ("ticker", "expiration", "strike", "right")}

    def test_avg_cost_is_per_share_not_per_contract(self):
        held = {p.instrument.con_id: p for p in self.stack.tws.portfolio.positions("DU1234567")}
        positions = self.ok("positions")["positions"]
        options = [p for p in positions if p["sec_type"] == "OPT"]
        self.assertTrue(options)
        for row in positions:
            self.assertAlmostEqual(row["avg_cost"], held[row["con_id"]].avg_cost / row["multiplier"], places=6)

    def test_an_unknown_symbol_is_no_security_definition_for_that_ticker(self):
        results = {}
        text = self.new_lines(
            lambda: results.update(
                alone=self.request("quote", {"tickers": ["ZZZZQ"]}),
                mixed=self.request("quote", {"tickers": ["AAPL", "ZZZZQ", "MSFT"]}),
                chain=self.request("fetch-chain", {"ticker": "zzzzq"}),
            )
        )
        alone, mixed, chain = (results[k] for k in ("alone", "mixed", "chain"))
        expected = {
            "code": NO_SECURITY_DEFINITION,
            "message": "TWS knows no stock, ETF or index ZZZZQ (USD)",
            "ib_code": 200,
        }
        self.assertEqual(alone["error"], expected)
        self.assertEqual(chain["error"], expected)
        self.assertTrue(mixed["ok"], mixed)
        self.assertEqual(sorted(mixed["data"]["quotes"]), ["AAPL", "MSFT"])  # never an all-null ZZZZQ quote
        self.assertEqual(mixed["data"]["errors"], {"ZZZZQ": expected})
        self.assertIsNotNone(mixed["data"]["quotes"]["AAPL"]["bid"])
        self.assertIn(
            "Warning: request quote ZZZZQ failed: TWS knows no stock, ETF or index ZZZZQ (USD) "
            "(NO_SECURITY_DEFINITION, IB error 200)",
            text,
        )
        self.assertIn(
            "Warning: request fetch-chain ZZZZQ failed: TWS knows no stock, ETF or index ZZZZQ (USD) "
            "(NO_SECURITY_DEFINITION, IB error 200)",
            text,
        )
        self.assertRegex(
            text,
            r"request quote AAPL ZZZZQ MSFT: 2 quotes in \d+\.\d s; ZZZZQ failed: TWS knows no "
            r"stock, ETF or index ZZZZQ \(USD\) \(NO_SECURITY_DEFINITION\)",
        )

    def test_zz_a_request_longer_than_ten_seconds_says_how_far_it_is_every_ten_seconds(self):
        """About 21 s: a chain of some 650 SPY contracts, paced at 45 messages a second, cancelled
        once its second progress line is out (run last: it keeps the bulk lane busy)."""
        relay = self.stack.relay
        future = relay.submit("fetch-chain", {"ticker": "SPY", "max_days": 14}, id="slow-chain", timeout_s=90)
        agent = self.stack.agent
        second = agent.wait_for_output(r"fetch-chain SPY: (\d+)/(\d+) contracts after 20 s\n", timeout=45)
        first = re.search(r"fetch-chain SPY: (\d+)/(\d+) contracts after 10 s\n", agent.output)
        self.assertIsNotNone(first, agent.output[-2000:])
        relay.cancel("slow-chain")
        self.assertEqual(future.result(30)["error"]["code"], "CANCELLED")
        done_10, total_10, done_20, total_20 = (int(first[1]), int(first[2]), int(second[1]), int(second[2]))
        self.assertEqual(total_10, total_20)
        self.assertTrue(0 < done_10 < done_20 < total_20, (first[0], second[0]))
        frames = relay.progress.get("slow-chain") or []
        self.assertTrue(frames and frames[-1]["total"] == total_20, frames[-1:])  # the frames' done/total
        self.assertEqual(len(re.findall(r"fetch-chain SPY: \d+/\d+ contracts after", agent.output)), 2)
        agent.wait_for_output(r"request fetch-chain SPY cancelled\n", timeout=10)  # one line for the cancel
        self.assertEqual(agent.output.count("cancelled"), 1, agent.output[-2000:])


if __name__ == "__main__":
    unittest.main()
