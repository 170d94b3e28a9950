"""The fake TWS's market model: deterministic per seed, listed chains with holes, sane prices."""
from __future__ import annotations

import datetime as dt
import math
import unittest

from tests.fake_market import (RISK_FREE_RATE, Market, Portfolio, black_scholes, occ_local_symbol,
                               on_tick)

TODAY = dt.date(2026, 3, 4)          # a Wednesday


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
            expirations = self.market.expirations(symbol)
            self.assertTrue(8 <= len(expirations) <= 12, (symbol, expirations))
            days = [(dt.datetime.strptime(e, "%Y%m%d").date() - TODAY).days for e in expirations]
            self.assertTrue(0 < days[0] <= 7 and days[-1] <= 400, days)
            self.assertTrue(all(dt.datetime.strptime(e, "%Y%m%d").weekday() == 4 for e in expirations))
            self.assertIn("20260320", expirations)                        # March's third Friday
        self.assertLessEqual(len(self.market.expirations("MRGT")), 4)

    def test_the_grid_is_a_superset_of_what_is_listed(self):
        for symbol in self.market.specs:
            grid = set(self.market.strikes(symbol))
            holes = [(e, k) for e in self.market.expirations(symbol) for k in grid
                     if not self.market.find(symbol=symbol, sec_type="OPT", expiry=e, strike=k, right="C")]
            self.assertTrue(holes, symbol)

    def test_lookup_by_con_id_local_symbol_and_partial_contract(self):
        option = self.market.options("SPY")[40]
        self.assertEqual(self.market.find(con_id=option.con_id), [option])
        self.assertEqual(self.market.find(sec_type="OPT", local_symbol=option.local_symbol), [option])
        self.assertEqual(option.local_symbol, occ_local_symbol("SPY", option.expiry, option.right, option.strike))
        both = self.market.find(symbol="spy", sec_type="OPT", expiry=option.expiry, strike=option.strike)
        self.assertEqual({o.right for o in both}, {"C", "P"})
        self.assertEqual(self.market.find(symbol="SPY", sec_type="OPT", expiry=option.expiry[:6], strike=option.strike,
                                          right="CALL", trading_class="SPY")[0].right, "C")
        self.assertEqual(self.market.find(symbol="SPY", sec_type="OPT", currency="EUR"), [])
        self.assertEqual(self.market.find(symbol="ZZZZ", sec_type="STK"), [])

    def test_quotes(self):
        spy = self.market.stocks["SPY"]
        quote = self.market.quote(spy)
        self.assertTrue(0 < quote.bid < quote.last < quote.ask)
        atm = min(self.market.find(symbol="AAPL", sec_type="OPT", expiry=self.market.expirations("AAPL")[4],
                                   right="P"), key=lambda o: abs(o.strike - self.market.spot("AAPL")))
        quote = self.market.quote(atm)
        self.assertTrue(0 < quote.bid < quote.ask)
        self.assertTrue(-1 < quote.greeks.delta < 0 and quote.greeks.gamma > 0 and quote.greeks.theta < 0)
        self.assertTrue(on_tick(quote.bid) and on_tick(quote.ask))
        thin = [self.market.quote(o) for o in self.market.options("MRGT")]
        self.assertGreater(sum(q.bid < 0 for q in thin), len(thin) // 2)     # thinly traded
        far = max(self.market.find(symbol="SPY", sec_type="OPT", expiry=self.market.expirations("SPY")[0], right="C"),
                  key=lambda o: o.strike)
        self.assertEqual((self.market.quote(far).bid, self.market.quote(far).bid_size), (-1.0, 0))

    def test_black_scholes_put_call_parity(self):
        spot, strike, years, vol = 100.0, 95.0, 0.5, 0.3
        call, put = black_scholes(spot, strike, years, vol, "C"), black_scholes(spot, strike, years, vol, "P")
        self.assertAlmostEqual(call[0] - put[0], spot - strike * math.exp(-RISK_FREE_RATE * years), places=9)
        self.assertAlmostEqual(call[1] - put[1], 1.0, places=9)

    def test_tick_check(self):
        self.assertTrue(on_tick(1.25) and on_tick(3.0))
        self.assertFalse(on_tick(1.005) or on_tick(2.0001))


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
