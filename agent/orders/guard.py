"""The local safeguards around orders that the cloud cannot change (DESIGN.md 5.3).

- the shape of place-order / cancel-order params (as agent.relay.params schemas),
- the order policy (ALLOW_ORDERS, MAX_ORDER_QUANTITY, MAX_ORDER_NOTIONAL): pure functions,
- the append-only audit log (JSON lines, flushed and fsynced),
- the on-disk request-id store that makes placement exactly-once across agent restarts.

Nothing here talks to TWS; agent.orders.desk.OrderDesk puts these pieces in front of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from agent import log as agent_log
from agent.errors import AgentError
from agent.ib.ports import is_paper_account
from agent.relay.params import (
    REQUIRED,
    RIGHT,
    STRIKE,
    TICKER,
    TRADING_CLASS,
    Checker,
    choice,
    date,
    number,
    obj,
    only_for,
    pattern,
)

log = agent_log.logger("orders")


# Multiplier assumed before the contract is qualified. Options are checked again with the real
# multiplier after qualification; this first check errs on the side of refusing (a mini option with
# multiplier 10 is measured as if it were 100 until qualification would have told otherwise).
STANDARD_MULTIPLIER = {"STK": 1.0, "OPT": 100.0}


# --- params: schemas as data, checked by agent.relay.params ------------------------------------------

ORDER_CONTRACT = {
    "ticker": (TICKER, REQUIRED),
    "sec_type": (choice("OPT", "STK"), REQUIRED),
    "expiration": (date, None),
    "strike": (STRIKE, None),
    "right": (RIGHT, None),
    "trading_class": (TRADING_CLASS, None),
    "exchange": (choice("SMART"), "SMART"),  # orders route SMART
}
OPTION_ONLY = only_for(
    "sec_type", "OPT", "an option (OPT)", required=("expiration", "strike", "right"), optional=("trading_class",)
)
POSITIVE_WHOLE = number(0, integer=True, lo_open=True)

ORDER_PARAMS: Dict[str, Checker] = {
    "place-order": obj(
        {
            "contract": (obj(ORDER_CONTRACT, rules=(OPTION_ONLY,)), REQUIRED),
            "action": (choice("BUY", "SELL"), REQUIRED),
            "quantity": (POSITIVE_WHOLE, REQUIRED),
            "order_type": (choice("LMT"), REQUIRED),  # limit orders only
            "limit_price": (number(0, lo_open=True), REQUIRED),
            "tif": (choice("DAY", "GTC"), "DAY"),
            "account": (pattern(r"[A-Z0-9]{1,32}", "an account id such as DU1234567"), None),
        }
    ),
    "cancel-order": obj({"order_id": (POSITIVE_WHOLE, REQUIRED)}),
}


def parse_order_params(action: str, params: Any) -> dict:
    """place-order / cancel-order params, checked and normalised (idempotent on its own output)."""
    return ORDER_PARAMS[action](params, "params")


# --- the policy: pure functions returning the rule that refuses, or None -------------------------


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
        return f"MAX_ORDER_QUANTITY={config.max_order_quantity}: quantity {order['quantity']} is over the limit"
    notional = order["limit_price"] * order["quantity"] * multiplier
    if notional > config.max_order_notional:
        return (
            f"MAX_ORDER_NOTIONAL={config.max_order_notional:g}: {order['limit_price']:g} x "
            f"{order['quantity']} x {multiplier:g} = {notional:.2f} is over the limit"
        )
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
            return (
                f"ALLOW_ORDERS=paper: the connected account {named} is "
                f"{ib_status.get('account_type') or 'of unknown type'}; set ALLOW_ORDERS=live "
                "in config.env to allow orders on a live account"
            )
        if account is not None and not is_paper_account(account):
            return f"ALLOW_ORDERS=paper: account {account} is not a paper account (DU.../DF...)"
    return None


# --- audit log ---------------------------------------------------------------------------------


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clipped(value: Any, limit: int = 200, mask=None) -> Any:
    """Values from the cloud, bounded so a hostile request cannot bloat the audit log; the key is
    masked before anything is cut (a cut through it would leave a part no masking recognises)."""
    if isinstance(value, str):
        return agent_log.clip(value, limit, mask)
    if isinstance(value, Mapping):
        return {agent_log.clip(str(k), 40, mask): _clipped(v, limit, mask) for k, v in list(value.items())[:12]}
    if isinstance(value, bool) or value is None or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 1e15 else f"{str(value)[:20]}... ({len(str(value))} digits)"
    return agent_log.clip(str(value), limit, mask)  # also NaN/inf, which would make the line invalid JSON


class AuditError(OSError):
    """The audit line cannot be written: nothing may be sent to TWS."""


AUDIT_ROLL_BYTES = 10 * 1024 * 1024  # the current file rolls over at this size, and at each new UTC day
AUDIT_MIN_FREE_BYTES = 1024 * 1024  # less free disk than this: refuse before sending anything


class AuditLog:
    """Append-only JSON lines, one per place/cancel request; each line is on disk before we answer.

    The file keeps its name (order_audit.jsonl); when it holds lines of an earlier UTC day, or has
    grown past AUDIT_ROLL_BYTES, it is renamed to order_audit-YYYYMMDD.jsonl (the day of its last
    line; -2, -3... if that name is taken) and a new one is started. Nothing is ever truncated or
    overwritten. The audit fails closed: check() says (AuditError) when a line could not be written
    now, and write() raises AuditError (after logging the line) when it was not.
    """

    FIELDS = (
        "time",
        "request_id",
        "action",
        "account",
        "contract",
        "side",
        "quantity",
        "limit_price",
        "decision",
        "order_id",
        "outcome",
    )

    def __init__(self, path: Path, mask=None, roll_bytes: int = AUDIT_ROLL_BYTES, clock=time.time):
        self.path = Path(path)
        self._mask = mask or (lambda text: text)
        self._roll_bytes = roll_bytes
        self._clock = clock
        self._lock = threading.Lock()

    def _roll_over(self) -> None:
        """Under the lock: move a full or earlier day's file to its dated name (never over another)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        last_day = datetime.fromtimestamp(info.st_mtime, timezone.utc).strftime("%Y%m%d")
        today = datetime.fromtimestamp(self._clock(), timezone.utc).strftime("%Y%m%d")
        if info.st_size == 0 or (last_day == today and info.st_size < self._roll_bytes):
            return
        stem, suffix = self.path.stem, self.path.suffix
        for n in range(1, 10_000):
            dated = self.path.with_name(f"{stem}-{last_day}{'' if n == 1 else f'-{n}'}{suffix}")
            if not dated.exists():
                break
        os.rename(self.path, dated)  # dated does not exist: nothing is overwritten (one agent per folder)
        log.info("Order audit log rolled over to %s", dated.name)

    def _problem(self, exc: OSError) -> AuditError:
        return AuditError(f"the order audit log {self.path} cannot be written ({exc.strerror or exc})")

    def check(self) -> None:
        """Raises AuditError when a line cannot be appended now (a folder in its place, no permission,
        a full disk), so the caller sends nothing to TWS."""
        with self._lock:
            try:
                self._roll_over()
                with open(self.path, "a", encoding="utf-8") as fh:
                    os.fsync(fh.fileno())
                free = shutil.disk_usage(self.path.parent).free
            except OSError as exc:
                raise self._problem(exc) from None
            if free < AUDIT_MIN_FREE_BYTES:
                raise AuditError(f"the disk holding the order audit log {self.path} is full ({free // 1024} KB free)")

    def write(
        self,
        action: str,
        request_id: str,
        params: Any,
        decision: str,
        order_id: Optional[int],
        outcome: Mapping[str, Any],
    ) -> None:
        params = params if isinstance(params, Mapping) else {}
        mask = self._mask
        entry = {
            "time": utc_now_iso(),
            "request_id": _clipped(request_id, 128, mask),
            "action": action,
            "account": _clipped(params.get("account"), mask=mask),
            "contract": _clipped(params.get("contract"), mask=mask),
            "side": _clipped(params.get("action"), mask=mask),
            "quantity": _clipped(params.get("quantity"), mask=mask),
            "limit_price": _clipped(params.get("limit_price"), mask=mask),
            "decision": decision,
            "order_id": order_id if order_id is not None else _clipped(params.get("order_id"), mask=mask),
            "outcome": dict(outcome),
        }
        line = self._mask(json.dumps(entry, separators=(",", ":"), default=str)) + "\n"
        try:
            with self._lock:
                self._roll_over()
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:  # the log file keeps the entry; the caller decides what the answer says
            log.error(
                "Cannot append to the order audit log %s (%s); the entry was: %s",
                self.path,
                exc.strerror or exc,
                line.strip(),
            )
            raise self._problem(exc) from None


def outcome_of_error(error: AgentError, exception: Optional[str] = None) -> dict:
    """The audit outcome of a failed request; `exception` names the class of an unexpected error."""
    outcome = {"error": error.code, "ib_code": error.ib_code, "message": error.message}
    if exception:
        outcome["exception"] = exception
    return outcome


# --- request-id store --------------------------------------------------------------------------

SENDING = "sending"  # written before placeOrder goes out; outcome unknown until updated
PLACED = "placed"  # TWS acknowledged the order: order_id and status
FAILED = "failed"  # TWS answered with an error: the order does not exist
UNKNOWN = "unknown"  # an unexpected error in the agent while placing: the order may have reached TWS
UNFINISHED = frozenset((SENDING, UNKNOWN))  # a repeat of the id looks in TWS before placing anything
STATES = frozenset((SENDING, PLACED, FAILED, UNKNOWN))
KEEP_S = 35 * 24 * 3600.0  # at least the 30 days DESIGN.md promises, plus a margin

ORDER_REF_PREFIX = "mat-"
ORDER_REF_HASH_CHARS = 24  # 96 bits of SHA-256: no two request ids of one account will meet


def order_ref_for(request_id: str) -> str:
    """The orderRef an order of this request carries in TWS: "mat-" + 24 hex digits of the SHA-256
    of the request id (UTF-8). Whatever the cloud puts in an id (up to 128 characters, any text),
    the ref is 28 ASCII characters, letters, digits and one "-": no NUL or other separator of TWS's
    protocol, nothing TWS could cut or reject, the same on every PC and agent version."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    return ORDER_REF_PREFIX + digest[:ORDER_REF_HASH_CHARS]


class StoreUnreadable(ValueError):
    """order_ids.json is not a store this agent wrote (torn, corrupt, edited by hand)."""


class RequestIdStore:
    """request id -> what happened to its order (and the orderRef it carries), on disk, kept at
    least `keep_s` (35 days).

    Every change rewrites the file atomically (tmp file, fsync, os.replace, fsync of the folder), so
    a crash leaves either the old or the new version, never half of one. A file that does not read
    back as a whole store is moved aside (order_ids.json.unreadable-<time>, named in one log line)
    and `lost` says so: its ids are not known any more, which the desk treats as "unknown" (every id
    it does not find here is looked up in TWS before anything is placed, as it always is), never as
    "nothing was placed". When the file cannot even be moved aside, nothing is written over it:
    `put` raises, so no order can be placed until the user has looked at it.
    """

    def __init__(self, path: Path, keep_s: float = KEEP_S, clock=time.time):
        self.path = Path(path)
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self.lost: Optional[str] = None  # why the earlier records are not known, if they are not
        self._broken: Optional[str] = None  # why nothing may be written, if so
        self._records: Dict[str, dict] = self._load()

    @staticmethod
    def _parse(text: str) -> Dict[str, dict]:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("requests"), dict):
            raise StoreUnreadable("not an order id store")
        records = data["requests"]
        for request_id, record in records.items():
            if not (
                isinstance(record, dict)
                and record.get("state") in STATES
                and isinstance(record.get("time"), (int, float))
            ):
                raise StoreUnreadable(f"a record that is not whole ({agent_log.clip(str(request_id), 40)!r})")
        return records

    def _load(self) -> Dict[str, dict]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._broken = self.lost = f"{self.path} cannot be read ({exc.strerror or exc})"
            log.error("%s: no order can be placed until the agent can read and write it.", self._broken)
            return {}
        try:
            records = self._parse(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and StoreUnreadable are ValueErrors
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(self._clock())}")
            reason = exc.__class__.__name__ if not isinstance(exc, StoreUnreadable) else str(exc)
            try:
                os.replace(self.path, aside)
            except OSError as move:
                self._broken = self.lost = (
                    f"{self.path} is damaged ({reason}) and cannot be moved aside ({move.strerror or move})"
                )
                log.error("%s: no order can be placed until it is moved away by hand.", self._broken)
                return {}
            self.lost = f"{self.path.name} was damaged ({reason}); kept as {aside}"
            log.error(
                "The order request-id store %s is damaged (%s); it is kept for you as %s. Every order "
                "request id is now looked up in TWS (open orders, today's completed orders, executions "
                "of the last 7 days) before anything is placed.",
                self.path,
                reason,
                aside,
            )
            return {}
        cutoff = self._clock() - self.keep_s
        return {k: v for k, v in records.items() if v["time"] >= cutoff}

    def get(self, request_id: str) -> Optional[dict]:
        with self._lock:
            record = self._records.get(request_id)
            return dict(record) if record else None

    def request_for_order(self, order_id: int, client_id: Optional[int]) -> Optional[str]:
        """The place-order request whose order has this id under this client id (a record without a
        client id, written before it was kept, matches any), the newest if several."""
        with self._lock:
            found = [
                (record["time"], request_id)
                for request_id, record in self._records.items()
                if record.get("action", "place-order") == "place-order"
                and record.get("order_id") == order_id
                and record.get("client_id", client_id) == client_id
            ]
        return max(found)[1] if found else None

    def annotate(self, request_id: str, **fields) -> None:
        """Add fields to a record, its state unchanged (written like put); raises OSError."""
        with self._lock:
            if self._broken:
                raise OSError(0, self._broken)
            if request_id not in self._records:
                return
            records = dict(self._records)
            records[request_id] = dict(records[request_id], **fields)
            self._save(records)
            self._records = records

    def notes_by_order_ref(self) -> Dict[str, dict]:
        """orderRef -> {"warning", "reason"}: what TWS told about the orders of these requests after
        (or with) their answer (a 399/404 warning, a rejection), for open-orders. Every order of a
        request has both keys, null when TWS said nothing."""
        with self._lock:
            return {
                record["order_ref"]: {"warning": record.get("warning"), "reason": record.get("reason")}
                for record in self._records.values()
                if record.get("order_ref")
            }

    def put(self, request_id: str, state: str, **fields) -> None:
        """Record a state; raises OSError (and changes nothing) when it cannot be written."""
        with self._lock:
            if self._broken:
                raise OSError(0, self._broken)
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
