"""The fake TWS's market: the instruments listed (`fake_listings.py`) built into option chains,
resolved the way TWS resolves a contract, and priced with Black-Scholes quotes and greeks.

Everything a client can see is derived from `seed` and today's date, so two fakes started with the
same seed on the same day serve the same instruments, conIds and first quotes. Only the streaming
drift (`Market.drift`) moves afterwards.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import threading
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from tests.fake_listings import (
    ISINS,
    MULTIPLIER,
    OPTION_CON_ID_BASE,
    OPTION_ORDER_TYPES,
    STOCK_CATEGORY,
    STOCK_ORDER_TYPES,
    UNDERLYINGS,
    Instrument,
    UnderlyingSpec,
    listed_expirations,
    market_rule_ids,
    occ_local_symbol,
    strike_grid,
    trading_hours,
)

RISK_FREE_RATE = 0.045


@dataclass(frozen=True)
class Quote:
    """Top of book for one instrument; bid -1 / size 0 means "no bid"."""

    bid: float
    ask: float
    last: float
    close: float
    bid_size: int
    ask_size: int
    last_size: int
    volume: int
    open_interest: int = 0
    implied_vol: float = 0.0
    call_volume: int = 0
    put_volume: int = 0
    call_open_interest: int = 0
    put_open_interest: int = 0
    greeks: Optional["Greeks"] = None


@dataclass(frozen=True)
class Greeks:
    """A tickOptionComputation row (vega per vol point, theta per calendar day)."""

    implied_vol: float
    delta: float
    opt_price: float
    gamma: float
    vega: float
    theta: float
    und_price: float


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(
    spot: float, strike: float, years: float, vol: float, right: str, rate: float = RISK_FREE_RATE
) -> Tuple[float, float, float, float, float]:
    """(price, delta, gamma, vega per 1.00 of vol, theta per year)."""
    sqrt_t = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    discount = math.exp(-rate * years)
    gamma = _norm_pdf(d1) / (spot * vol * sqrt_t)
    vega = spot * _norm_pdf(d1) * sqrt_t
    decay = -spot * _norm_pdf(d1) * vol / (2 * sqrt_t)
    if right == "C":
        price = spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2)
        return price, _norm_cdf(d1), gamma, vega, decay - rate * strike * discount * _norm_cdf(d2)
    price = strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
    return price, _norm_cdf(d1) - 1.0, gamma, vega, decay + rate * strike * discount * _norm_cdf(-d2)


def round_to_tick(price: float, tick: float = 0.01) -> float:
    return round(round(price / tick) * tick, 2)


def on_tick(price: float, tick: float = 0.01) -> bool:
    """A limit price TWS accepts: a whole number of ticks (so never more than 2 decimals)."""
    return abs(price / tick - round(price / tick)) < 1e-6


class Market:
    """Instruments, chains and quotes; thread-safe (one lock around the drifting spots)."""

    def __init__(self, seed: int = 1, today: Optional[dt.date] = None):
        self.seed = seed
        self.today = today or dt.date.today()
        rng = random.Random(seed)
        self._lock = threading.Lock()
        self._drift_rng = random.Random(seed * 7919 + 1)
        self.specs: Dict[str, UnderlyingSpec] = {s.symbol: s for s in UNDERLYINGS}
        self.stocks: Dict[str, Instrument] = {}
        self._spot: Dict[str, float] = {}
        self._options: Dict[str, List[Instrument]] = {}
        self._expirations: Dict[str, List[str]] = {}
        self._by_con_id: Dict[int, Instrument] = {}
        next_con_id = OPTION_CON_ID_BASE
        self.indices: Dict[str, Instrument] = {}
        self.other_listings: Dict[str, List[Instrument]] = {}  # same-symbol stocks beside self.stocks
        self._class_symbol: Dict[str, str] = {}  # trading class -> underlying symbol
        stock_hours = (trading_hours(self.today, "0400", "2000"), trading_hours(self.today, "0930", "1600"))
        option_hours = (trading_hours(self.today, "0930", "1600"),) * 2
        for spec in UNDERLYINGS:
            self._spot[spec.symbol] = round(spec.price * (1 + rng.uniform(-0.02, 0.02)), 2)
            index = spec.sec_type == "IND"
            category, subcategory = STOCK_CATEGORY.get(spec.industry, ("", ""))
            # NASDAQ-listed stocks trade under class "NMS" (as recorded for AAPL and AMZN)
            underlying = Instrument(
                spec.con_id,
                spec.symbol,
                spec.sec_type,
                exchange=spec.primary_exchange if index else "SMART",
                primary_exchange=spec.primary_exchange,
                local_symbol=spec.symbol,
                trading_class="NMS" if spec.primary_exchange == "NASDAQ" and not index else spec.symbol,
                long_name=spec.long_name,
                industry=spec.industry,
                category=category,
                subcategory=subcategory,
                valid_exchanges=spec.primary_exchange if index else "SMART,ARCA,NYSE,NASDAQ,ISLAND,BATS,IEX",
                order_types="" if index else STOCK_ORDER_TYPES,
                trading_hours=option_hours[0] if index else stock_hours[0],
                liquid_hours=option_hours[1] if index else stock_hours[1],
                sec_ids=(("ISIN", ISINS[spec.symbol]),) if spec.symbol in ISINS else (),
            )
            underlying = replace(underlying, market_rule_ids=market_rule_ids(underlying.valid_exchanges, spec.sec_type))
            (self.indices if index else self.stocks)[spec.symbol] = underlying
            self._by_con_id[underlying.con_id] = underlying
            for con_id, primary, long_name in spec.other_listings:
                other = replace(
                    underlying,
                    con_id=con_id,
                    primary_exchange=primary,
                    long_name=long_name,
                    valid_exchanges=f"SMART,{primary}",
                    sec_ids=(),
                )
                self.other_listings.setdefault(spec.symbol, []).append(other)
                self._by_con_id[con_id] = other
            option_exchanges = ",".join(spec.option_exchanges)
            template = Instrument(
                0,
                spec.symbol,
                "OPT",
                multiplier=MULTIPLIER,
                long_name=spec.long_name,
                under_con_id=spec.con_id,
                valid_exchanges=option_exchanges,
                order_types=OPTION_ORDER_TYPES,
                market_rule_ids=market_rule_ids(option_exchanges, "OPT"),
                trading_hours=option_hours[0],
                liquid_hours=option_hours[1],
                under_sec_type=spec.sec_type,
            )
            options = []

            def list_options(trading_class: str, expiry: str, strikes: Sequence[float], multiplier: str) -> None:
                nonlocal next_con_id
                self._class_symbol[trading_class] = spec.symbol
                for strike in strikes:
                    for right in ("C", "P"):
                        option = replace(
                            template,
                            con_id=next_con_id,
                            expiry=expiry,
                            strike=strike,
                            right=right,
                            multiplier=multiplier,
                            trading_class=trading_class,
                            local_symbol=occ_local_symbol(trading_class, expiry, right, strike),
                        )
                        options.append(option)
                        self._by_con_id[next_con_id] = option
                        next_con_id += 1

            listed = listed_expirations(spec, self.today)
            for day, kind in listed:
                expiry = day.strftime("%Y%m%d")
                self._expirations.setdefault(spec.symbol, []).append(expiry)
                strikes = strike_grid(spec, spec.weekly_pct if kind == "weekly" else spec.monthly_pct)
                holed = kind == "weekly" or (spec.thin and expiry != self._expirations[spec.symbol][0])
                if holed and len(strikes) > 6:
                    strikes.remove(rng.choice(strikes[2:-2]))  # a hole inside the grid
                if spec.weekly_class:
                    # Monthlies list under both classes (AM-settled SPX, PM-settled SPXW), weeklies
                    # only under the weekly class.
                    if kind != "weekly":
                        list_options(spec.symbol, expiry, strikes, MULTIPLIER)
                    list_options(spec.weekly_class, expiry, strikes, MULTIPLIER)
                else:
                    list_options(spec.symbol, expiry, strikes, MULTIPLIER)
            if spec.adjusted_multiplier:
                # The adjusted class: monthlies only, strikes around the price before the adjustment
                # (deliverable adjusted_multiplier shares instead of 100).
                factor = float(spec.adjusted_multiplier) / float(MULTIPLIER)
                before = replace(spec, price=spec.price * factor, strike_step=spec.wide_step)
                for day, kind in listed:
                    if kind != "weekly":
                        list_options(
                            f"{spec.symbol}1",
                            day.strftime("%Y%m%d"),
                            strike_grid(before, spec.monthly_pct / 2),
                            spec.adjusted_multiplier,
                        )
            self._options[spec.symbol] = options
        # Daily expirations last, so every option above keeps its conId: each lists only the
        # strikes near the money (a part of the chain's strike union) with a hole or two.
        for spec in UNDERLYINGS:
            if not spec.dailies:
                continue
            options = self._options[spec.symbol]
            listed = set(self._expirations[spec.symbol])
            day, added = self.today, 0
            while added < spec.dailies:
                day += dt.timedelta(days=1)
                if day.weekday() >= 5:
                    continue
                added += 1
                expiry = day.strftime("%Y%m%d")
                if expiry in listed:
                    continue
                strikes = strike_grid(replace(spec, price=self._spot[spec.symbol]), spec.daily_pct)
                for _ in range(2):
                    strikes.remove(rng.choice(strikes[2:-2]))
                template = replace(options[0], con_id=0)
                for strike in strikes:
                    for right in ("C", "P"):
                        option = replace(
                            template,
                            con_id=next_con_id,
                            expiry=expiry,
                            strike=strike,
                            right=right,
                            local_symbol=occ_local_symbol(spec.symbol, expiry, right, strike),
                        )
                        options.append(option)
                        self._by_con_id[next_con_id] = option
                        next_con_id += 1
                self._expirations[spec.symbol].append(expiry)
            self._expirations[spec.symbol].sort()

    # ---- reference data -------------------------------------------------------------------

    def by_con_id(self, con_id: int) -> Optional[Instrument]:
        return self._by_con_id.get(con_id)

    def expirations(self, symbol: str) -> List[str]:
        return list(self._expirations.get(symbol, ()))

    def strikes(self, symbol: str) -> List[float]:
        """Every strike listed on any expiration of any class (a superset)."""
        return sorted({o.strike for o in self._options.get(symbol, ())})

    def underlying(self, symbol: str) -> Optional[Instrument]:
        """The stock or index an option chain is on."""
        return self.stocks.get(symbol) or self.indices.get(symbol)

    def chain_classes(self, symbol: str) -> List[Tuple[str, str, List[str], List[float]]]:
        """(trading class, multiplier, expirations, strikes) per trading class of the chain, the
        standard class first: what reqSecDefOptParams answers per exchange. Strikes are the union
        over that class's expirations (most (expiration, strike) pairs of the grid may not exist)."""
        classes: Dict[str, Tuple[str, set, set]] = {}
        for option in self._options.get(symbol, ()):
            multiplier, expirations, strikes = classes.setdefault(
                option.trading_class, (option.multiplier, set(), set())
            )
            expirations.add(option.expiry)
            strikes.add(option.strike)
        return [
            (name, multiplier, sorted(expirations), sorted(strikes))
            for name, (multiplier, expirations, strikes) in sorted(
                classes.items(), key=lambda item: (item[0] != symbol, item[0])
            )
        ]

    def options(self, symbol: str) -> List[Instrument]:
        return list(self._options.get(symbol, ()))

    def find(
        self,
        con_id: int = 0,
        symbol: str = "",
        sec_type: str = "",
        expiry: str = "",
        strike: float = 0.0,
        right: str = "",
        trading_class: str = "",
        multiplier: str = "",
        currency: str = "",
        local_symbol: str = "",
        primary_exchange: str = "",
    ) -> List[Instrument]:
        """Instruments matching a (possibly partial) contract the way TWS resolves one: every
        match (reqContractDetails lists them all; a request that needs one contract gets error
        200 "ambiguous" for more than one)."""
        if con_id:
            found = self._by_con_id.get(con_id)
            if found is None or (sec_type and sec_type != found.sec_type):
                return []
            return [found]
        symbol = symbol.upper()
        if currency and currency != "USD":
            return []
        if sec_type in ("STK", "IND"):
            listed = self.stocks if sec_type == "STK" else self.indices
            found = listed.get(symbol) or next(
                (s for s in listed.values() if local_symbol and s.local_symbol == local_symbol), None
            )
            if found is None:
                return []
            matches = [found] + (self.other_listings.get(found.symbol, []) if sec_type == "STK" else [])
            return [m for m in matches if not primary_exchange or m.primary_exchange == primary_exchange]
        if sec_type != "OPT":
            return []
        right = {"CALL": "C", "PUT": "P"}.get(right.upper(), right.upper())
        candidates = self._options.get(symbol)
        if candidates is None and local_symbol:  # the OCC root is the trading class (SPXW, XYZ1)
            root = local_symbol[:6].strip()
            candidates = self._options.get(self._class_symbol.get(root, root), [])
        return [
            o
            for o in candidates or ()
            if (not expiry or o.expiry.startswith(expiry))
            and (not strike or abs(o.strike - strike) < 1e-6)
            and (not right or o.right == right)
            and (not trading_class or o.trading_class == trading_class)
            and (not multiplier or o.multiplier == multiplier)
            and (not local_symbol or o.local_symbol == local_symbol)
        ]

    # ---- prices ---------------------------------------------------------------------------

    def spot(self, symbol: str) -> float:
        with self._lock:
            return self._spot[symbol]

    def drift(self, symbol: str) -> float:
        """Move one underlying a little (streaming updates) and return the new spot."""
        with self._lock:
            spot = self._spot[symbol] * (1 + self._drift_rng.gauss(0, 0.0004))
            self._spot[symbol] = round(spot, 2)
            return self._spot[symbol]

    def _contract_rng(self, instrument: Instrument) -> random.Random:
        return random.Random(self.seed * 1_000_003 + instrument.con_id)

    def quote(self, instrument: Instrument) -> Quote:
        if instrument.sec_type == "STK":
            return self._stock_quote(instrument)
        if instrument.sec_type == "IND":
            return self._index_quote(instrument)
        return self._option_quote(instrument)

    def _index_quote(self, index: Instrument) -> Quote:
        """An index has a value (last) and a close, never a bid or an ask."""
        rng = self._contract_rng(index)
        spot = self.spot(index.symbol)
        return Quote(
            bid=-1.0,
            ask=-1.0,
            last=spot,
            close=round(spot * (1 - rng.uniform(-0.01, 0.01)), 2),
            bid_size=0,
            ask_size=0,
            last_size=0,
            volume=0,
            implied_vol=self.specs[index.symbol].vol,
        )

    def _stock_quote(self, stock: Instrument) -> Quote:
        spec = self.specs[stock.symbol]
        rng = self._contract_rng(stock)
        spot = self.spot(stock.symbol)
        half = 0.01 if not spec.thin else 0.03
        volume = int(rng.uniform(0.5, 3.0) * (2_000_000 if not spec.thin else 150_000))
        return Quote(
            bid=round(spot - half, 2),
            ask=round(spot + half, 2),
            last=spot,
            close=round(spot * (1 - rng.uniform(-0.01, 0.01)), 2),
            bid_size=rng.randrange(1, 20) * 100,
            ask_size=rng.randrange(1, 20) * 100,
            last_size=rng.randrange(1, 5) * 100,
            volume=volume,
            implied_vol=spec.vol,
            call_volume=volume // 40,
            put_volume=volume // 55,
            call_open_interest=volume // 3,
            put_open_interest=volume // 4,
        )

    def years_to_expiry(self, expiry: str) -> float:
        day = dt.datetime.strptime(expiry, "%Y%m%d").date()
        return (max((day - self.today).days, 0) + 0.5) / 365.0

    def implied_vol(self, option: Instrument, spot: float) -> float:
        """A smile: higher vol away from the money, a little more on the put side."""
        spec = self.specs[option.symbol]
        moneyness = math.log(option.strike / spot)
        skew = -0.3 * moneyness if moneyness < 0 else 0.0
        return spec.vol * (1 + 1.5 * moneyness * moneyness) + spec.vol * skew

    def _option_quote(self, option: Instrument) -> Quote:
        spec = self.specs[option.symbol]
        rng = self._contract_rng(option)
        und_price = self.spot(option.symbol)
        # An adjusted option delivers `multiplier` shares, not 100: priced on that many shares
        spot = und_price * float(option.multiplier or MULTIPLIER) / float(MULTIPLIER)
        years = self.years_to_expiry(option.expiry)
        vol = self.implied_vol(option, spot)
        price, delta, gamma, vega, theta = black_scholes(spot, option.strike, years, vol, option.right)
        price = max(price, 0.0)
        half = 0.05 + 0.08 * price if spec.thin else 0.01 + 0.015 * price
        bid = round_to_tick(price - half)
        ask = max(round_to_tick(price + half), 0.01 if not spec.thin else 0.05)
        no_bid = bid < 0.05 or (spec.thin and (bid < 0.30 or rng.random() < 0.4))
        distance = abs(math.log(option.strike / spot))
        liquidity = math.exp(-distance * 12) * (0.02 if spec.thin else 1.0)
        volume = int(rng.uniform(0, 4000) * liquidity)
        close = round_to_tick(max(price * (1 + rng.uniform(-0.05, 0.05)), 0.01))
        greeks = Greeks(vol, delta, price, gamma, vega / 100.0, theta / 365.0, und_price)
        return Quote(
            bid=-1.0 if no_bid else bid,
            ask=ask,
            last=close if volume else -1.0,
            close=close,
            bid_size=0 if no_bid else rng.randrange(1, 60),
            ask_size=rng.randrange(1, 60),
            last_size=rng.randrange(1, 10) if volume else 0,
            volume=volume,
            open_interest=int(rng.uniform(10, 20000) * liquidity),
            implied_vol=vol,
            greeks=greeks,
        )

    def side_greeks(self, option: Instrument, quote: Quote, price: float) -> Optional[Greeks]:
        """The computation TWS attaches to a bid/ask/last price: the model's greeks at the vol
        that prices the option at `price` (None when there is no such price)."""
        model = quote.greeks
        if model is None or price <= 0:
            return None
        vega_per_vol = model.vega * 100.0
        vol = model.implied_vol
        if vega_per_vol > 1e-9:
            vol = max(0.01, vol + (price - model.opt_price) / vega_per_vol)
        return replace(model, implied_vol=vol, opt_price=price)

    def fill_price(self, instrument: Instrument, action: str, limit: Optional[float]) -> Optional[float]:
        """The price an order fills at now (limit None = market order), or None when it rests."""
        quote = self.quote(instrument)
        if action == "BUY" and quote.ask > 0 and (limit is None or limit >= quote.ask):
            return quote.ask
        if action == "SELL" and quote.bid > 0 and (limit is None or limit <= quote.bid):
            return quote.bid
        return None
