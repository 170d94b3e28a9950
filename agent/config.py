"""Configuration: config.env next to the scripts, overridden by the process environment.

Every variable is validated once at start; a bad one raises ConfigError with one line that names
it (the agent prints that line and exits 2). The key itself never appears in a message.
"""

from __future__ import annotations

import difflib
import io
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from dotenv.parser import Binding, parse_stream

AGENT_DIR = Path(__file__).resolve().parent.parent  # the folder a user unzipped: config.env, the scripts
DEFAULT_CONFIG_FILE = AGENT_DIR / "config.env"
PLACEHOLDER_KEY = "YOUR_API_KEY_HERE"
DEFAULT_RELAY_URL = "wss://relay.ma-tracker.com/ws/agent"
# Room for a Monitor page's contracts plus their underlyings; cold requests take warm lines back.
DEFAULT_WARM_LINES = 60

MODES = ("paper", "live")
MARKET_DATA_TYPES = ("auto", "live", "frozen", "delayed", "delayed-frozen")
ORDER_POLICIES = ("paper", "live", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """One line naming the variable and what is wrong with it."""


@dataclass(frozen=True)
class Config:
    key: str = field(repr=False)
    relay_url: str = DEFAULT_RELAY_URL
    ib_host: str = "127.0.0.1"
    ib_port: Optional[int] = None
    ib_mode: str = "paper"
    ib_mode_explicit: bool = False
    ib_client_id: int = 17
    ib_max_msg_rate: float = 45.0
    ib_max_mkt_lines: int = 90
    market_data_type: str = "auto"
    warm_lines: int = DEFAULT_WARM_LINES
    warm_seconds: float = 300.0
    option_timeout_s: float = 8.0
    request_timeout_s: float = 15.0
    allow_orders: str = "paper"
    max_order_quantity: int = 10
    max_order_notional: float = 25000.0
    agent_workers: int = 4
    agent_queue_size: int = 64
    log_level: str = "INFO"
    data_dir: Path = AGENT_DIR

    @property
    def log_file(self) -> Path:
        return self.data_dir / "ib_data_agent.log"

    @property
    def audit_log_file(self) -> Path:
        return self.data_dir / "order_audit.jsonl"

    @property
    def order_ids_file(self) -> Path:
        return self.data_dir / "order_ids.json"


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range ({lo} to {hi})")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not lo <= value <= hi:  # also rejects nan
            raise ConfigError(f"{name}={raw} is out of range ({lo:g} to {hi:g})")
        return value

    return parse


def _choice(choices) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower() if choices is not LOG_LEVELS else raw.strip().upper()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def _host(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() or c in "/@?#" for c in value):
        raise ConfigError(f"{name}={raw!r} is not a host name or IP address")
    return value


def _key(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or value == PLACEHOLDER_KEY:
        raise ConfigError(
            f"{name} is not configured: put the API key from the MA Tracker web app in config.env "
            "(or download a fresh copy of the agent, which has it filled in)"
        )
    if len(value) > 512 or any(ord(c) < 33 or ord(c) > 126 for c in value):
        raise ConfigError(f"{name} contains spaces or characters an API key cannot have")
    return value


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def relay_url_problem(url: str) -> Optional[Tuple[str, bool]]:
    """Why a relay URL is refused (DESIGN.md 4: wss://, ws:// only to a loopback host), and whether
    the message may quote the URL (not when it holds a password), or None. The one check: the
    config and RelayLink both ask it."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("wss", "ws") or not parsed.hostname:
        return "is not a wss:// URL", True
    if parsed.username or parsed.password:
        return "must not contain a user name or password", False
    if parsed.scheme == "ws" and not is_loopback_host(parsed.hostname):
        return (
            f"uses unencrypted ws:// to {parsed.hostname}; only wss:// is allowed "
            "(ws:// is accepted for a loopback host only)"
        ), False
    try:
        _port = parsed.port  # urllib checks the port only when it is read
    except ValueError:
        return "has an invalid port", True
    return None


def _relay_url(name: str, raw: str) -> str:
    value = raw.strip()
    problem = relay_url_problem(value)
    if problem is None:
        return value
    text, quote = problem
    raise ConfigError(f"{name}={raw!r} {text}" if quote else f"{name} {text}")


def _data_dir(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = AGENT_DIR / path
    if not path.is_dir():
        raise ConfigError(f"{name}={raw!r} is not an existing folder")
    return path


# variable name -> (Config field, parser). Order is the order of checks and of config.env.
VARIABLES: Dict[str, tuple] = {
    "IB_PROVIDER_KEY": ("key", _key),
    "RELAY_URL": ("relay_url", _relay_url),
    "IB_HOST": ("ib_host", _host),
    "IB_PORT": ("ib_port", _int(1, 65535)),
    "IB_MODE": ("ib_mode", _choice(MODES)),
    "IB_CLIENT_ID": ("ib_client_id", _int(0, 2**31 - 100)),
    "IB_MAX_MSG_RATE": ("ib_max_msg_rate", _float(1, 50)),
    "IB_MAX_MKT_LINES": ("ib_max_mkt_lines", _int(1, 10000)),
    "MARKET_DATA_TYPE": ("market_data_type", _choice(MARKET_DATA_TYPES)),
    "WARM_LINES": ("warm_lines", _int(0, 10000)),
    "WARM_SECONDS": ("warm_seconds", _float(0, 86400)),
    "OPTION_TIMEOUT_S": ("option_timeout_s", _float(0.5, 120)),
    "REQUEST_TIMEOUT_S": ("request_timeout_s", _float(1, 600)),
    "ALLOW_ORDERS": ("allow_orders", _choice(ORDER_POLICIES)),
    "MAX_ORDER_QUANTITY": ("max_order_quantity", _int(0, 1_000_000)),
    "MAX_ORDER_NOTIONAL": ("max_order_notional", _float(0, 1e12)),
    "AGENT_WORKERS": ("agent_workers", _int(1, 64)),
    "AGENT_QUEUE_SIZE": ("agent_queue_size", _int(1, 100_000)),
    "LOG_LEVEL": ("log_level", _choice(LOG_LEVELS)),
    "AGENT_DATA_DIR": ("data_dir", _data_dir),
}


_LINE_NAME = re.compile(r"\s*(?:export\s+)?([^\s=#'\"]+)")


def _file_lines(path: Path) -> List[Binding]:
    """config.env as python-dotenv's parser reads it: one binding per setting, comment or blank,
    and an error binding for text it cannot parse (which dotenv_values would silently skip)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    return list(parse_stream(io.StringIO(text)))


def _shown(name: str) -> str:
    """A name from the file as it may appear in the one error line: printable, bounded."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in name)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_name(name: str) -> str:
    """ "MAX_NOTIONAL: unknown setting; did you mean MAX_ORDER_NOTIONAL?" (names are case-sensitive)."""
    same = [known for known in VARIABLES if known.lower() == name.lower()]
    close = same or difflib.get_close_matches(name.upper(), VARIABLES, n=1, cutoff=0.6)
    name = _shown(name)
    if same:
        return f"{name}: unknown setting; did you mean {same[0]}? (names are case-sensitive)"
    if close:
        return f"{name}: unknown setting; did you mean {close[0]}?"
    return f"{name}: unknown setting (config.env lists every setting the agent knows)"


def _file_values(path: Path) -> Dict[str, str]:
    """The settings of config.env, refusing (fail closed) what a typo could make the agent ignore:
    a line that does not parse, a name it does not know, a name without a value, a name set twice.
    Messages name the setting and the line, never the value (it may be the key)."""
    values: Dict[str, str] = {}
    lines: Dict[str, int] = {}
    for binding in _file_lines(path):
        line = binding.original.line
        where = f"{path.name} line {line}"
        if binding.error:
            first = binding.original.string.splitlines()[0] if binding.original.string else ""
            named = _LINE_NAME.match(first)
            name = _shown(named.group(1)) if named else "a setting"
            raise ConfigError(
                f"{name} ({where}): cannot be read (an unclosed quote, or text after the "
                f"closing quote?); write it as {name}=value"
            )
        if binding.key is None:  # a comment or a blank line
            continue
        name = binding.key
        if name not in VARIABLES:
            raise ConfigError(f"{_unknown_name(name)} ({where})")
        if binding.value is None:
            raise ConfigError(f"{name} ({where}): has no '='; write it as {name}=value, or put # in front")
        if name in lines:
            raise ConfigError(f"{name} is set twice in {path.name} (lines {lines[name]} and {line}); keep one")
        lines[name] = line
        # taken as written: no ${VAR} interpolation (a key may contain "$" and must reach the cloud as is)
        values[name] = binding.value
    return values


def read_raw(config_path: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The merged raw values: the file first, then the environment on top (empty values count as unset).
    The environment is read only for the names in VARIABLES."""
    path = Path(config_path) if config_path else DEFAULT_CONFIG_FILE
    if config_path and not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    raw: Dict[str, str] = _file_values(path) if path.is_file() else {}
    env = os.environ if environ is None else environ
    raw = {k: v for k, v in raw.items() if v.strip() != ""}
    raw.update({name: env[name] for name in VARIABLES if env.get(name, "").strip() != ""})
    return raw


def configured_key(config_path: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The key as written, even in a config that does not validate, so its errors can be masked."""
    env = os.environ if environ is None else environ
    if env.get("IB_PROVIDER_KEY", "").strip():
        return env["IB_PROVIDER_KEY"].strip()
    path = Path(config_path) if config_path else DEFAULT_CONFIG_FILE
    try:
        for binding in _file_lines(path) if path.is_file() else ():
            if binding.key == "IB_PROVIDER_KEY" and binding.value and not binding.error:
                return binding.value.strip()
    except ConfigError:
        pass
    return ""


def load_config(config_path: Optional[Path] = None, environ: Optional[Mapping[str, str]] = None) -> Config:
    raw = read_raw(config_path, environ)
    values = {}
    for name, (attr, parse) in VARIABLES.items():
        if name in raw:
            values[attr] = parse(name, raw[name])
    if "key" not in values:
        _key("IB_PROVIDER_KEY", "")
    values["ib_mode_explicit"] = "IB_MODE" in raw
    if "WARM_LINES" not in raw:  # the default leaves at least a third of the lines to cold requests
        max_lines = values.get("ib_max_mkt_lines", Config.ib_max_mkt_lines)
        values["warm_lines"] = min(DEFAULT_WARM_LINES, max_lines * 2 // 3)
    config = Config(**values)
    if config.warm_lines >= config.ib_max_mkt_lines:
        raise ConfigError(
            f"WARM_LINES={config.warm_lines} must be smaller than IB_MAX_MKT_LINES={config.ib_max_mkt_lines}"
        )
    return config
