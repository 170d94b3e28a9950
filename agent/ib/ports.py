"""Which TWS port to use (DESIGN.md 5.1), as a pure decision over what each port answered.

The agent must never send paper-mode work to a live account (or the reverse) just because the
user's port numbers follow the original README's swapped table, so a port is judged by the
account logged in there, not by its number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# IB's own defaults: TWS paper 7497, IB Gateway paper 4002, TWS live 7496, IB Gateway live 4001.
CANDIDATE_PORTS: Dict[str, Tuple[int, ...]] = {
    "paper": (7497, 4002, 7496, 4001),
    "live": (7496, 4001, 7497, 4002),
}
PAPER_ACCOUNT_PREFIXES = ("DU", "DF")  # DF: advisor paper accounts (DESIGN.md 3: the paper/live test)


def is_paper_account(account: str) -> bool:
    return account.upper().startswith(PAPER_ACCOUNT_PREFIXES)


def account_type(accounts: Sequence[str]) -> Optional[str]:
    """ "paper" when every account is a paper account, "live" otherwise, None when there are none."""
    if not accounts:
        return None
    if all(is_paper_account(a) for a in accounts):
        return "paper"
    return "live"


@dataclass(frozen=True)
class PortProbe:
    """What one port answered: the logged-in accounts, or why there was no usable answer."""

    port: int
    accounts: Tuple[str, ...] = ()
    failure: Optional[str] = None  # e.g. "not listening"


@dataclass(frozen=True)
class Decision:
    port: Optional[int]  # the port to use; None when no port is acceptable
    account_type: Optional[str]
    findings: Tuple[str, ...]  # one line per port that was tried and not used
    mismatch: bool  # some TWS answered with the other account type

    @property
    def message(self) -> str:
        return "; ".join(self.findings)


def candidate_ports(
    ib_port: Optional[int], mode: str, table: Optional[Dict[str, Sequence[int]]] = None
) -> Tuple[int, ...]:
    if ib_port is not None:
        return (ib_port,)
    return tuple((table or CANDIDATE_PORTS)[mode])


def _accounts_phrase(accounts: Sequence[str]) -> str:
    noun = "account" if len(accounts) == 1 else "accounts"
    return f"{noun} {', '.join(accounts)}"


def judge(probe: PortProbe, mode: str, mode_required: bool, mode_is_default: bool = False) -> Optional[str]:
    """None when the port is usable, else the line that says what was found there."""
    if probe.failure:
        return f"port {probe.port}: {probe.failure}"
    found = account_type(probe.accounts)
    if found is None:
        return f"port {probe.port}: TWS reported no account"
    if mode_required and found != mode:
        default = " (the default)" if mode_is_default else ""
        return (
            f"port {probe.port}: TWS logged into {found.upper()} {_accounts_phrase(probe.accounts)}, "
            f"but IB_MODE={mode}{default}"
        )
    return None


def resolve_port(
    ib_port: Optional[int],
    mode: str,
    mode_explicit: bool,
    probe: Callable[[int], PortProbe],
    table: Optional[Dict[str, Sequence[int]]] = None,
) -> Decision:
    """Probe the candidate ports in order and take the first acceptable one (5.1).

    IB_PORT set: only that port; its account type must match IB_MODE only when IB_MODE was set
    too. IB_PORT unset: the account type must match IB_MODE (default paper). Ports after the
    chosen one are never probed.
    """
    mode_required = ib_port is None or mode_explicit
    findings: List[str] = []
    mismatch = False
    for port in candidate_ports(ib_port, mode, table):
        found = probe(port)
        verdict = judge(found, mode, mode_required, mode_is_default=not mode_explicit)
        if verdict is None:
            return Decision(port, account_type(found.accounts), tuple(findings), mismatch)
        mismatch = mismatch or (found.failure is None and bool(found.accounts))
        findings.append(verdict)
    return Decision(None, None, tuple(findings), mismatch)
