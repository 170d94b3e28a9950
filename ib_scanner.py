"""The scanner's public face, as the original README names it: `Scanner` with
`get_available_expirations`, `get_option_data`, `get_option_data_batch` and `fetch_option_chain`
(plus `quote`, `fetch_prices` and `sell_scan`), and the helpers the web app's figures rest on.

The code lives in `agent/ib/scanner.py` (the IB half, docs/ARCHITECTURE.md); this file only keeps
the names where users and scripts import them from.
"""

from agent.ib.scanner import (
    CHAIN_CACHE_S,
    Scanner,
    days_to,
    is_adjusted_class,
    new_york_date,
    sell_metrics,
    strikes_around,
    underlying_price,
)

__all__ = [
    "CHAIN_CACHE_S",
    "Scanner",
    "days_to",
    "is_adjusted_class",
    "new_york_date",
    "sell_metrics",
    "strikes_around",
    "underlying_price",
]
