"""Port and mode resolution (DESIGN.md 5.1) as tables: what each port answers -> which port is used."""

import unittest

from agent.ib.ports import CANDIDATE_PORTS, PortProbe, account_type, candidate_ports, resolve_port

PAPER = ("DU1234567",)
LIVE = ("U7654321",)
DOWN = "not listening"

# (name, IB_PORT, IB_MODE, IB_MODE set?, {port: accounts tuple or failure text},
#  expected port, expected account type, ports probed in order, words each finding must contain)
CASES = [
    ("paper default finds TWS paper on 7497", None, "paper", False, {7497: PAPER}, 7497, "paper", [7497], []),
    (
        "paper skips a live TWS on 7497 and takes gateway paper on 4002",
        None,
        "paper",
        False,
        {7497: LIVE, 4002: PAPER},
        4002,
        "paper",
        [7497, 4002],
        ["port 7497: TWS logged into LIVE account U7654321, but IB_MODE=paper (the default)"],
    ),
    (
        "old README table: paper TWS on 7496 is still found",
        None,
        "paper",
        True,
        {7497: DOWN, 4002: DOWN, 7496: PAPER},
        7496,
        "paper",
        [7497, 4002, 7496],
        ["port 7497: not listening", "port 4002: not listening"],
    ),
    ("live mode tries 7496 first", None, "live", True, {7496: LIVE}, 7496, "live", [7496], []),
    (
        "live mode never takes a paper account",
        None,
        "live",
        True,
        {7496: PAPER, 4001: DOWN, 7497: PAPER, 4002: DOWN},
        None,
        None,
        [7496, 4001, 7497, 4002],
        [
            "port 7496: TWS logged into PAPER account DU1234567, but IB_MODE=live",
            "port 4001: not listening",
            "port 7497: TWS logged into PAPER account DU1234567, but IB_MODE=live",
            "port 4002: not listening",
        ],
    ),
    (
        "nothing running: every port is reported",
        None,
        "paper",
        False,
        {},
        None,
        None,
        [7497, 4002, 7496, 4001],
        [
            "port 7497: not listening",
            "port 4002: not listening",
            "port 7496: not listening",
            "port 4001: not listening",
        ],
    ),
    ("IB_PORT alone wins and reports a live account", 7497, "paper", False, {7497: LIVE}, 7497, "live", [7497], []),
    (
        "IB_PORT alone is the only port tried",
        7496,
        "paper",
        False,
        {7496: DOWN, 7497: PAPER},
        None,
        None,
        [7496],
        ["port 7496: not listening"],
    ),
    (
        "IB_PORT and IB_MODE disagree: refused with what was found",
        7497,
        "paper",
        True,
        {7497: LIVE},
        None,
        None,
        [7497],
        ["port 7497: TWS logged into LIVE account U7654321, but IB_MODE=paper"],
    ),
    ("IB_PORT and IB_MODE agree", 7497, "live", True, {7497: LIVE}, 7497, "live", [7497], []),
    (
        "advisor paper accounts (DF) count as paper",
        None,
        "paper",
        False,
        {7497: ("DF111", "DU222")},
        7497,
        "paper",
        [7497],
        [],
    ),
    (
        "a paper and a live account together are live",
        None,
        "paper",
        False,
        {7497: ("DU1", "U2"), 4002: DOWN, 7496: DOWN, 4001: DOWN},
        None,
        None,
        [7497, 4002, 7496, 4001],
        [
            "port 7497: TWS logged into LIVE accounts DU1, U2, but IB_MODE=paper",
            "port 4002: not listening",
            "port 7496: not listening",
            "port 4001: not listening",
        ],
    ),
    (
        "a client-id failure is reported as such",
        None,
        "paper",
        False,
        {7497: "client ids 17 to 22 are all in use in TWS (error 326)", 4002: PAPER},
        4002,
        "paper",
        [7497, 4002],
        ["port 7497: client ids 17 to 22 are all in use"],
    ),
]


def prober(answers, probed):
    def probe(port):
        probed.append(port)
        found = answers.get(port, DOWN)
        if isinstance(found, str):
            return PortProbe(port, failure=found)
        return PortProbe(port, accounts=found)

    return probe


class ResolvePortTable(unittest.TestCase):
    def test_cases(self):
        for name, ib_port, mode, explicit, answers, port, kind, order, findings in CASES:
            with self.subTest(name):
                probed = []
                decision = resolve_port(ib_port, mode, explicit, prober(answers, probed))
                self.assertEqual(decision.port, port)
                self.assertEqual(decision.account_type, kind)
                self.assertEqual(probed, order, "ports probed, in order, and none after the chosen one")
                self.assertEqual(len(decision.findings), len(findings))
                for line, words in zip(decision.findings, findings):
                    self.assertIn(words, line)

    def test_mismatch_flag_asks_for_the_slow_retry(self):
        live_only = resolve_port(None, "paper", False, prober({7497: LIVE}, []))
        nothing = resolve_port(None, "paper", False, prober({}, []))
        self.assertTrue(live_only.mismatch)
        self.assertFalse(nothing.mismatch)

    def test_message_joins_every_finding(self):
        decision = resolve_port(None, "paper", True, prober({7497: LIVE}, []))
        self.assertEqual(
            decision.message,
            "port 7497: TWS logged into LIVE account U7654321, but IB_MODE=paper; "
            "port 4002: not listening; port 7496: not listening; "
            "port 4001: not listening",
        )

    def test_candidate_table_is_injectable(self):
        table = {"paper": (5001, 5002), "live": (5003,)}
        self.assertEqual(candidate_ports(None, "paper", table), (5001, 5002))
        self.assertEqual(candidate_ports(5009, "paper", table), (5009,))
        probed = []
        resolve_port(None, "live", True, prober({}, probed), table)
        self.assertEqual(probed, [5003])

    def test_ibs_default_ports(self):
        self.assertEqual(CANDIDATE_PORTS["paper"], (7497, 4002, 7496, 4001))
        self.assertEqual(CANDIDATE_PORTS["live"], (7496, 4001, 7497, 4002))


class AccountTypeTable(unittest.TestCase):
    def test_cases(self):
        for accounts, expected in [
            (("DU1",), "paper"),
            (("du1",), "paper"),
            (("DF1", "DU2"), "paper"),
            (("U1",), "live"),
            (("DU1", "U2"), "live"),
            (("F123",), "live"),
            ((), None),
        ]:
            with self.subTest(accounts):
                self.assertEqual(account_type(accounts), expected)


if __name__ == "__main__":
    unittest.main()
