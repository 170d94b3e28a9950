"""The agent behind `ib_data_agent.py` (the relay wiring) and `ib_scanner.py` (the public scanner),
cut by responsibility (docs/ARCHITECTURE.md draws it):

- `agent.ib`: the IB half. One TWS socket session (`session`: handshake, the one paced send path),
  the connection that keeps it up and routes callbacks (`connection`), the request layer every wait
  on TWS goes through (`requests`), IB's codes and tick tables (`codes`, `ticks`), market data over
  the line pool (`lines`; the pool's size and records in `line_pool`), pacing (`pacing`), ports
  (`ports`), the scanner (`scanner`) and live subscriptions (`subscriptions`).
- `agent.relay`: the relay half. The WebSocket link to the cloud (`link`), the frames it reads
  (`frames`), TLS (`tls`), the action table and its worker lanes (`actions`), parameter checks
  (`params`).
- `agent.orders`: the order desk (`desk`), its local policy, audit log and id store (`guard`), order
  rows and lookups in TWS (`book`), waiting for TWS's answers (`wait`), account reads (`account`,
  `portfolio`), order event frames (`events`) and what-if previews (`preview`).
- config and logging (`config`, `log`, `errors`, `backoff`), and the two helpers a user runs:
  `doctor` (`--check`) and `demo` (`--demo`).

This file must stay importable by any Python 3: `ib_data_agent.py` reads MIN_PYTHON from it before
anything else, to say plainly when the Python is too old.
"""

MIN_PYTHON = (3, 10)  # IB's ibapi 10.50 needs it; start_unix.sh and start_windows.ps1 refuse older
