"""The local safeguards around orders that the cloud cannot change (DESIGN.md 5.3).

- the shape of place-order / cancel-order params (as agent_params schemas),
- the order policy (ALLOW_ORDERS, MAX_ORDER_QUANTITY, MAX_ORDER_NOTIONAL): pure functions,
- the append-only audit log (JSON lines, flushed and fsynced),
- the on-disk request-id store that makes placement exactly-once across agent restarts.

Nothing here talks to TWS; ib_orders.OrderDesk puts these pieces in front of it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from agent_errors import AgentError
from agent_params import (REQUIRED, RIGHT, STRIKE, TICKER, TRADING_CLASS, Checker, choice, date, number, obj,
                          only_for, pattern)

log = logging.getLogger(__name__)

PAPER_ACCOUNT_PREFIXES = ("DU", "DF")

# Multiplier assumed before the contract is qualified. Options are checked again with the real
# multiplier after qualification; this first check errs on the side of refusing (a mini option with
# multiplier 10 is measured as if it were 100 until qualification would have told otherwise).
STANDARD_MULTIPLIER = {"STK": 1.0, "OPT": 100.0}


# --- params: schemas as data, checked by agent_params ------------------------------------------

ORDER_CONTRACT = {
    "ticker": (TICKER, REQUIRED), "sec_type": (choice("OPT", "STK"), REQUIRED),
    "expiration": (date, None), "strike": (STRIKE, None), "right": (RIGHT, None),
    "trading_class": (TRADING_CLASS, None),
    "exchange": (choice("SMART"), "SMART"),  # orders route SMART
}
OPTION_ONLY = only_for("sec_type", "OPT", "an option (OPT)", required=("expiration", "strike", "right"),
                       optional=("trading_class",))
POSITIVE_WHOLE = number(0, integer=True, lo_open=True)

ORDER_PARAMS: Dict[str, Checker] = {
    "place-order": obj({
        "contract": (obj(ORDER_CONTRACT, rules=(OPTION_ONLY,)), REQUIRED),
        "action": (choice("BUY", "SELL"), REQUIRED),
        "quantity": (POSITIVE_WHOLE, REQUIRED),
        "order_type": (choice("LMT"), REQUIRED),  # limit orders only
        "limit_price": (number(0, lo_open=True), REQUIRED),
        "tif": (choice("DAY", "GTC"), "DAY"),
        "account": (pattern(r"[A-Z0-9]{1,32}", "an account id such as DU1234567"), None),
    }),
    "cancel-order": obj({"order_id": (POSITIVE_WHOLE, REQUIRED)}),
}


def parse_order_params(action: str, params: Any) -> dict:
    """place-order / cancel-order params, checked and normalised (idempotent on its own output)."""
    return ORDER_PARAMS[action](params, "params")


# --- the policy: pure functions returning the rule that refuses, or None -------------------------

def is_paper_account(account: str) -> bool:
    return account.upper().startswith(PAPER_ACCOUNT_PREFIXES)


def orders_off_refusal(config) -> Optional[str]:
    """ALLOW_ORDERS=off: the cloud cannot touch orders at all, placing or cancelling."""
    if config.allow_orders == "off":
        return "ALLOW_ORDERS=off: orders are turned off in the agent's config.env"
    return None


def order_refusal(config, order: Mapping[str, Any], multiplier: float) -> Optional[str]:
    """The rule (ALLOW_ORDERS=off, quantity or notional cap) that refuses this order, if any."""
    refusal = orders_off_refusal(config)
    if refusal:
        return refusal
    if order["quantity"] > config.max_order_quantity:
        return (f"MAX_ORDER_QUANTITY={config.max_order_quantity}: quantity {order['quantity']} "
                "is over the limit")
    notional = order["limit_price"] * order["quantity"] * multiplier
    if notional > config.max_order_notional:
        return (f"MAX_ORDER_NOTIONAL={config.max_order_notional:g}: {order['limit_price']:g} x "
                f"{order['quantity']} x {multiplier:g} = {notional:.2f} is over the limit")
    return None


def account_refusal(config, ib_status: Mapping[str, Any], account: Optional[str]) -> Optional[str]:
    """The rule that refuses touching orders on this TWS session (and this account, when named).

    Cancels answer to this rule too: ALLOW_ORDERS=off means the cloud cannot touch orders at all,
    and under paper it cannot cancel live orders (e.g. a protective order the trader placed by hand).
    """
    refusal = orders_off_refusal(config)
    if refusal:
        return refusal
    accounts = list(ib_status.get("accounts") or [])
    if account is not None and account not in accounts:
        return f"account {account} is not an account of this TWS session ({', '.join(accounts) or 'none'})"
    if config.allow_orders == "paper":
        named = ", ".join(accounts) or "unknown"
        if ib_status.get("account_type") != "paper":
            return (f"ALLOW_ORDERS=paper: the connected account {named} is "
                    f"{ib_status.get('account_type') or 'of unknown type'}; set ALLOW_ORDERS=live "
                    "in config.env to allow orders on a live account")
        if account is not None and not is_paper_account(account):
            return f"ALLOW_ORDERS=paper: account {account} is not a paper account (DU.../DF...)"
    return None


# --- audit log ---------------------------------------------------------------------------------

def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clipped(value: Any, limit: int = 200) -> Any:
    """Values from the cloud, bounded so a hostile request cannot bloat the audit log."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, Mapping):
        return {str(k)[:40]: _clipped(v, limit) for k, v in list(value.items())[:12]}
    if isinstance(value, (bool, int)) or value is None or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)[:limit]  # also NaN/inf, which would make the line invalid JSON


class AuditLog:
    """Append-only JSON lines, one per place/cancel request; each line is on disk before we answer."""

    FIELDS = ("time", "request_id", "action", "account", "contract", "side", "quantity",
              "limit_price", "decision", "order_id", "outcome")

    def __init__(self, path: Path, mask=None):
        self.path = Path(path)
        self._mask = mask or (lambda text: text)
        self._lock = threading.Lock()

    def write(self, action: str, request_id: str, params: Any, decision: str,
              order_id: Optional[int], outcome: Mapping[str, Any]) -> None:
        params = params if isinstance(params, Mapping) else {}
        entry = {
            "time": utc_now_iso(),
            "request_id": _clipped(request_id, 128),
            "action": action,
            "account": _clipped(params.get("account")),
            "contract": _clipped(params.get("contract")),
            "side": _clipped(params.get("action")),
            "quantity": _clipped(params.get("quantity")),
            "limit_price": _clipped(params.get("limit_price")),
            "decision": decision,
            "order_id": order_id if order_id is not None else _clipped(params.get("order_id")),
            "outcome": dict(outcome),
        }
        line = self._mask(json.dumps(entry, separators=(",", ":"), default=str)) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # the answer to the cloud must not be lost with it: the log file keeps it
            log.error("Cannot append to the order audit log %s (%s); the entry was: %s",
                      self.path, exc.strerror or exc, line.strip())


def outcome_of_error(error: AgentError, exception: Optional[str] = None) -> dict:
    """The audit outcome of a failed request; `exception` names the class of an unexpected error."""
    outcome = {"error": error.code, "ib_code": error.ib_code, "message": error.message}
    if exception:
        outcome["exception"] = exception
    return outcome


# --- request-id store --------------------------------------------------------------------------

SENDING = "sending"   # written before placeOrder goes out; outcome unknown until updated
PLACED = "placed"     # TWS acknowledged the order: order_id and status
FAILED = "failed"     # TWS answered with an error: the order does not exist
UNKNOWN = "unknown"   # an unexpected error in the agent while placing: the order may have reached TWS
UNFINISHED = frozenset((SENDING, UNKNOWN))  # a repeat of the id looks in TWS before placing anything


class RequestIdStore:
    """request id -> what happened to its order, on disk, kept at least `keep_s` (default 48 h).

    Every change rewrites the file atomically (tmp file, fsync, os.replace), so a crash leaves
    either the old or the new version, never half of one.
    """

    def __init__(self, path: Path, keep_s: float = 48 * 3600.0, clock=time.time):
        self.path = Path(path)
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: Dict[str, dict] = self._load()

    def _load(self) -> Dict[str, dict]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            records = data["requests"]
            if not isinstance(records, dict):
                raise ValueError("requests is not an object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(self._clock())}")
            log.error("%s cannot be read (%s); moved to %s. Order request ids placed before now are "
                      "checked against TWS's open orders only.", self.path, exc, aside.name)
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            return {}
        cutoff = self._clock() - self.keep_s
        return {k: v for k, v in records.items()
                if isinstance(v, dict) and isinstance(v.get("time"), (int, float)) and v["time"] >= cutoff}

    def get(self, request_id: str) -> Optional[dict]:
        with self._lock:
            record = self._records.get(request_id)
            return dict(record) if record else None

    def put(self, request_id: str, state: str, **fields) -> None:
        """Record a state; raises OSError (and changes nothing) when it cannot be written."""
        with self._lock:
            record = dict(self._records.get(request_id) or {})
            record.update(fields, state=state, time=self._clock())
            cutoff = self._clock() - self.keep_s
            records = {k: v for k, v in self._records.items() if v["time"] >= cutoff}
            records[request_id] = record
            self._save(records)
            self._records = records

    def _save(self, records: Dict[str, dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": 1, "requests": records}, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            fd = os.open(str(self.path.parent), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
