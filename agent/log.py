"""Console lines a trader can read, a rotating log file with the details, and the one place the API
key is masked.

Every handler gets a MaskingFormatter, so whatever reaches logging (our lines, library lines,
tracebacks) has the key replaced before it is written. Uncaught exceptions on any thread are sent
through logging too (sys.excepthook, threading.excepthook), so a crash report is masked the same way.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Iterable, List, Optional, TextIO

MASK = "****"
LOG_FILE_BYTES = 5 * 1024 * 1024
LOG_FILE_BACKUPS = 3
CONSOLE_FORMAT = "%(asctime)s %(message)s"
CONSOLE_DATE_FORMAT = "%H:%M:%S"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"
# Libraries that narrate their own connection handling; the agent says it in its own words.
LIBRARY_LEVELS = {"websocket": logging.CRITICAL, "ibapi": logging.WARNING, "asyncio": logging.WARNING}

ROOT_LOGGER = "ib_data_agent"


def logger(part: str = "") -> logging.Logger:
    """The agent's logger tree: `ib_data_agent` and one child per part (ib, relay, requests, orders)."""
    return logging.getLogger(f"{ROOT_LOGGER}.{part}" if part else ROOT_LOGGER)


log = logger()


class Masker:
    """Replaces every spelling of the secrets that can end up in text: as-is, URL-quoted, repr-escaped."""

    def __init__(self, secrets: Iterable[str]):
        spellings = set()
        for secret in secrets:
            if secret:
                spellings.update({secret, urllib.parse.quote(secret, safe=""), repr(secret)[1:-1]})
        self._spellings = sorted(spellings, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for spelling in self._spellings:
            if spelling in text:
                text = text.replace(spelling, MASK)
        return text


# The masker of the running agent (setup() installs it), for text that is cut short before it
# reaches logging or the cloud: masking must come first, or a cut could keep part of the key.
_masker = Masker(())


def mask(text: str, masker: Optional[Masker] = None) -> str:
    """The text with the key masked (by `masker`, or the running agent's)."""
    return (masker or _masker)(text)


def plural(count: int, word: str, many: Optional[str] = None) -> str:
    """ "1 account", "3 accounts", "0 candidates": a count as a trader writes it."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def printable(text: str) -> str:
    """Text from the cloud for a console line, with control characters escaped (`\\x1b`, `\\n`): it must
    not be able to move the cursor or recolour the user's console."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def clip(text: str, limit: int, masker: Optional[Masker] = None, ellipsis: str = "") -> str:
    """Text cut to `limit` characters, masked before it is cut: a cut through the key would
    otherwise leave a part of it that no masking can recognise afterwards."""
    text = mask(text, masker)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(ellipsis))] + ellipsis


class MaskingFormatter(logging.Formatter):
    """Formats as usual, then masks the whole result (message, arguments, traceback, stack)."""

    def __init__(
        self, masker: Masker, fmt: str, datefmt: Optional[str] = None, brief: bool = False, encoding: str = "utf-8"
    ):
        super().__init__(fmt, datefmt)
        self._masker = masker
        self._brief = brief
        self._encoding = encoding

    def formatException(self, ei) -> str:
        if self._brief:  # console: the last line of the traceback; the log file has all of it
            lines = super().formatException(ei).strip().splitlines()
            return "  " + (lines[-1] if lines else "") + "  (details in the log file)"
        return super().formatException(ei)

    def formatStack(self, stack_info: str) -> str:
        return "" if self._brief else super().formatStack(stack_info)

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # format the traceback our way, not the last handler's
        try:
            text = super().format(record)
        finally:
            record.exc_text = cached
        if self._brief and record.levelno >= logging.WARNING:
            head, _, tail = text.partition(" ")
            text = f"{head} {record.levelname.capitalize()}: {tail}"
        # Text the stream cannot encode (a lone surrogate from the cloud, a symbol a Windows console
        # lacks) would make the handler fail, and logging's error report prints the raw arguments.
        text = text.encode(self._encoding, "backslashreplace").decode(self._encoding)
        return self._masker(text)


class AgentLogging:
    """What setup() installed, so tests (and a second setup) can take it down again."""

    def __init__(self, handlers: List[logging.Handler], previous_hooks: tuple, log_file: Optional[Path]):
        self.handlers = handlers
        self.log_file = log_file
        self._previous_hooks = previous_hooks

    def close(self) -> None:
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()
        sys.excepthook, threading.excepthook = self._previous_hooks


def _log_uncaught(exc_type, exc, tb, thread_name: Optional[str] = None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        return
    where = f" in thread {thread_name}" if thread_name else ""
    log.critical(
        "Unexpected error%s: the agent hit a bug. Please send the log file to MA Tracker support.",
        where,
        exc_info=(exc_type, exc, tb),
    )


def _thread_hook(args) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, args.thread.name if args.thread else "?")


def setup(
    secrets: Iterable[str], level: str = "INFO", log_file: Optional[Path] = None, console: Optional[TextIO] = None
) -> AgentLogging:
    """Route all logging to the console (short lines) and the rotating log file, key masked in both."""
    global _masker
    masker = _masker = Masker(secrets)
    logging.raiseExceptions = False  # a handler that fails must not print the record's unmasked arguments
    stream = console or sys.stdout
    console_handler = logging.StreamHandler(stream)
    console_handler.setFormatter(
        MaskingFormatter(
            masker,
            CONSOLE_FORMAT,
            CONSOLE_DATE_FORMAT,
            brief=True,
            encoding=getattr(stream, "encoding", None) or "utf-8",
        )
    )
    console_handler.setLevel(level)
    handlers: List[logging.Handler] = [console_handler]
    file_problem = None
    if log_file is not None:
        try:
            file_handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
            )
        except OSError as exc:
            file_problem = f"Cannot write the log file {log_file} ({exc.strerror}); logging to the console only"
            log_file = None
        else:
            file_handler.setFormatter(MaskingFormatter(masker, FILE_FORMAT))
            file_handler.setLevel(min(logging.getLevelName(level), logging.INFO))
            handlers.append(file_handler)
    root = logging.getLogger()
    root.setLevel(min(h.level for h in handlers))
    for handler in handlers:
        root.addHandler(handler)
    for name, library_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(True)
    previous_hooks = (sys.excepthook, threading.excepthook)
    sys.excepthook = _log_uncaught
    threading.excepthook = _thread_hook
    if file_problem:
        log.warning(file_problem)
    return AgentLogging(handlers, previous_hooks, log_file)
