"""The fake TWS's market model: deterministic per seed, listed chains with holes, sane prices."""

from __future__ import annotations

import datetime as dt
import math
import unittest

from tests.fake_account import Portfolio
from tests.fake_listings import occ_local_symbol
from tests.fake_market import RISK_FREE_RATE, Market, black_scholes, on_tick

TODAY = dt.date(2026, 3, 4)  # a Wednesday


class MarketTest(unittest.TestCase):
    def setUp(self):
        self.market = Market(seed=5, today=TODAY)

    def test_same_seed_same_market_other_seed_other_prices(self):
        twin, other = Market(seed=5, today=TODAY), Market(seed=6, today=TODAY)
        for symbol in self.market.specs:
            self.assertEqual([o.con_id for o in twin.options(symbol)], [o.con_id for o in self.market.options(symbol)])
            option = self.market.options(symbol)[len(self.market.options(symbol)) // 2]
            self.assertEqual(twin.quote(option), self.market.quote(option))
        self.assertNotEqual([other.spot(s) for s in other.specs], [self.market.spot(s) for s in self.market.specs])

    def test_expirations_are_weeklies_and_monthlies_within_about_a_year(self):
        for symbol in ("AAPL", "MSFT", "SPY"):
            expirations = [
                e
                for e in self.market.expirations(symbol)  # SPY: its dailies aside
                if dt.datetime.strptime(e, "%Y%m%d").weekday() == 4
            ]
            self.assertTrue(8 <= len(expirations) <= 12, (symbol, expirations))
            days = [(dt.datetime.strptime(e, "%Y%m%d").date() - TODAY).days for e in expirations]
            self.assertTrue(0 < days[0] <= 7 and days[-1] <= 400, days)
            self.assertTrue(all(dt.datetime.strptime(e, "%Y%m%d").weekday() == 4 for e in expirations))
            self.assertIn("20260320", expirations)  # March's third Friday
        self.assertLessEqual(len(self.market.expirations("MRGT")), 4)

    def test_spy_expires_daily_and_each_expiration_lists_part_of_the_strikes(self):
        expirations = self.market.expirations("SPY")
        weekdays = [TODAY + dt.timedelta(days=d) for d in range(1, 15) if (TODAY + dt.timedelta(days=d)).weekday() < 5]
        self.assertTrue({d.strftime("%Y%m%d") for d in weekdays[:10]} <= set(expirations))
        self.assertEqual(expirations, sorted(expirations))
        union = set(self.market.strikes("SPY"))
        near = [e for e in expirations if (dt.datetime.strptime(e, "%Y%m%d").date() - TODAY).days <= 30]
        partial = [
            e
            for e in near  # the dailies and weeklies; a monthly lists the wide grid
            if {o.strike for o in self.market.find(symbol="SPY", sec_type="OPT", expiry=e)} < union
        ]
        self.assertGreaterEqual(len(partial), len(near) - 1)
        old = Market(seed=5, today=TODAY).options("AAPL")
        self.assertEqual([o.con_id for o in old][:3], [o.con_id for o in self.market.options("AAPL")][:3])

    def test_a_symbol_ambiguous_as_a_stock(self):
        both = self.market.find(symbol="TWIN", sec_type="STK")
        self.assertEqual(sorted(s.primary_exchange for s in both), ["NYSE", "PINK"])
        self.assertEqual(
            [s.con_id for s in self.market.find(symbol="TWIN", sec_type="STK", primary_exchange="NYSE")],
            [self.market.stocks["TWIN"].con_id],
        )
        self.assertEqual(len(self.market.find(con_id=both[1].con_id)), 1)

    def test_the_grid_is_a_superset_of_what_is_listed(self):
        for symbol in self.market.specs:
            grid = set(self.market.strikes(symbol))
            holes = [
                (e, k)
                for e in self.market.expirations(symbol)
                for k in grid
                if not self.market.find(symbol=symbol, sec_type="OPT", expiry=e, strike=k, right="C")
            ]
            self.assertTrue(holes, symbol)

    def test_lookup_by_con_id_local_symbol_and_partial_contract(self):
        option = self.market.options("SPY")[40]
        self.assertEqual(self.market.find(con_id=option.con_id), [option])
        self.assertEqual(self.market.find(sec_type="OPT", local_symbol=option.local_symbol), [option])
        self.assertEqual(option.local_symbol, occ_local_symbol("SPY", option.expiry, option.right, option.strike))
        both = self.market.find(symbol="spy", sec_type="OPT", expiry=option.expiry, strike=option.strike)
        self.assertEqual({o.right for o in both}, {"C", "P"})
        self.assertEqual(
            self.market.find(
                symbol="SPY",
                sec_type="OPT",
                expiry=option.expiry[:6],
                strike=option.strike,
                right="CALL",
                trading_class="SPY",
            )[0].right,
            "C",
        )
        self.assertEqual(self.market.find(symbol="SPY", sec_type="OPT", currency="EUR"), [])
        self.assertEqual(self.market.find(symbol="ZZZZ", sec_type="STK"), [])

    def test_quotes(self):
        spy = self.market.stocks["SPY"]
        quote = self.market.quote(spy)
        self.assertTrue(0 < quote.bid < quote.last < quote.ask)
        atm = min(
            self.market.find(symbol="AAPL", sec_type="OPT", expiry=self.market.expirations("AAPL")[4], right="P"),
            key=lambda o: abs(o.strike - self.market.spot("AAPL")),
        )
        quote = self.market.quote(atm)
        self.assertTrue(0 < quote.bid < quote.ask)
        self.assertTrue(-1 < quote.greeks.delta < 0 and quote.greeks.gamma > 0 and quote.greeks.theta < 0)
        self.assertTrue(on_tick(quote.bid) and on_tick(quote.ask))
        thin = [self.market.quote(o) for o in self.market.options("MRGT")]
        self.assertGreater(sum(q.bid < 0 for q in thin), len(thin) // 2)  # thinly traded
        far = max(
            self.market.find(symbol="SPY", sec_type="OPT", expiry=self.market.expirations("SPY")[0], right="C"),
            key=lambda o: o.strike,
        )
        self.assertEqual((self.market.quote(far).bid, self.market.quote(far).bid_size), (-1.0, 0))

    def test_black_scholes_put_call_parity(self):
        spot, strike, years, vol = 100.0, 95.0, 0.5, 0.3
        call, put = black_scholes(spot, strike, years, vol, "C"), black_scholes(spot, strike, years, vol, "P")
        self.assertAlmostEqual(call[0] - put[0], spot - strike * math.exp(-RISK_FREE_RATE * years), places=9)
        self.assertAlmostEqual(call[1] - put[1], 1.0, places=9)

    def test_tick_check(self):
        self.assertTrue(on_tick(1.25) and on_tick(3.0))
        self.assertFalse(on_tick(1.005) or on_tick(2.0001))


class ChainClassesTest(unittest.TestCase):
    """Real chains with several trading classes: an index (SPX monthly AM-settled beside SPXW weekly
    and PM-settled) and a stock with an adjusted class beside its standard one."""

    def setUp(self):
        self.market = Market(seed=5, today=TODAY)

    def test_spx_is_an_index_with_a_monthly_and_a_weekly_class(self):
        spx = self.market.underlying("SPX")
        self.assertEqual((spx.sec_type, spx.primary_exchange, spx.con_id), ("IND", "CBOE", 416904))
        self.assertEqual(self.market.find(symbol="SPX", sec_type="IND"), [spx])
        self.assertEqual(self.market.find(symbol="SPX", sec_type="STK"), [])
        quote = self.market.quote(spx)
        self.assertEqual((quote.bid, quote.ask), (-1.0, -1.0))
        self.assertGreater(quote.last, 0)
        classes = {
            name: (multiplier, expirations) for name, multiplier, expirations, _ in self.market.chain_classes("SPX")
        }
        self.assertEqual(set(classes), {"SPX", "SPXW"})
        monthly, weekly = set(classes["SPX"][1]), set(classes["SPXW"][1])
        self.assertTrue(monthly < weekly)  # third Fridays list in both classes
        self.assertIn("20260320", monthly)
        both = self.market.find(symbol="SPX", sec_type="OPT", expiry="20260320", strike=5200.0, right="C")
        self.assertEqual(sorted(o.trading_class for o in both), ["SPX", "SPXW"])  # ambiguous without a class
        self.assertEqual({o.local_symbol[:6].strip() for o in both}, {"SPX", "SPXW"})
        spxw = self.market.find(sec_type="OPT", local_symbol=both[1].local_symbol)
        self.assertEqual(spxw, [both[1]])
        self.assertTrue(all(o.under_sec_type == "IND" for o in both))

    def test_an_adjusted_class_beside_the_standard_one(self):
        classes = {
            name: (multiplier, expirations, strikes)
            for name, multiplier, expirations, strikes in self.market.chain_classes("XYZ")
        }
        self.assertEqual(set(classes), {"XYZ", "XYZ1"})
        self.assertEqual((classes["XYZ"][0], classes["XYZ1"][0]), ("100", "150"))
        self.assertTrue(set(classes["XYZ1"][1]) < set(classes["XYZ"][1]))  # monthlies only
        adjusted = self.market.find(symbol="XYZ", sec_type="OPT", trading_class="XYZ1")
        self.assertTrue(adjusted and all(o.multiplier == "150" for o in adjusted))
        standard = self.market.find(symbol="XYZ", sec_type="OPT", trading_class="XYZ", expiry=adjusted[0].expiry)
        atm = min(adjusted, key=lambda o: abs(o.strike - 1.5 * self.market.spot("XYZ")))
        self.assertGreater(self.market.quote(atm).ask, 0)
        self.assertTrue(standard and max(o.strike for o in standard) < max(o.strike for o in adjusted))

    def test_the_single_class_chains_keep_their_conids(self):
        self.assertEqual(self.market.options("AAPL")[0].con_id, 600_000_000)
        self.assertEqual([c[0] for c in self.market.chain_classes("AAPL")], ["AAPL"])

    def test_reference_data_as_tws_gives_it(self):
        aapl = self.market.stocks["AAPL"]
        self.assertEqual((aapl.trading_class, aapl.sec_ids), ("NMS", (("ISIN", "US0378331005"),)))
        self.assertEqual(self.market.stocks["SPY"].trading_class, "SPY")
        for instrument in (aapl, self.market.options("AAPL")[0], self.market.underlying("SPX")):
            self.assertEqual(len(instrument.market_rule_ids.split(",")), len(instrument.valid_exchanges.split(",")))
        self.assertIn("20260307:CLOSED", aapl.trading_hours)  # a Saturday
        self.assertIn("20260304:0400-20260304:2000", aapl.trading_hours)
        self.assertIn("20260304:0930-20260304:1600", self.market.options("AAPL")[0].trading_hours)
        self.assertEqual(self.market.options("AAPL")[0].industry, "")


class PortfolioTest(unittest.TestCase):
    def test_opening_positions_fills_and_account_values(self):
        market = Market(seed=1, today=TODAY)
        portfolio = Portfolio(market, ["DU1", "DU2"])
        self.assertEqual({p.instrument.sec_type for p in portfolio.positions("DU1")}, {"STK", "OPT"})
        self.assertEqual(len(portfolio.positions("DU2")), 2)
        before = float(portfolio.account_values("DU2")["TotalCashValue"])
        option = market.options("AAPL")[10]
        portfolio.apply_fill("DU2", option, 2, 1.5)
        held = [p for p in portfolio.positions("DU2") if p.instrument.con_id == option.con_id]
        self.assertEqual((held[0].quantity, held[0].avg_cost), (2, 150.0))
        self.assertAlmostEqual(float(portfolio.account_values("DU2")["TotalCashValue"]), before - 300.0)
        portfolio.apply_fill("DU2", option, -2, 1.6)
        self.assertFalse([p for p in portfolio.positions("DU2") if p.instrument.con_id == option.con_id])


if __name__ == "__main__":
    unittest.main()
