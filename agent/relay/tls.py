"""TLS to the relay: the context (the certificate and host name are always checked), where its
trusted roots come from, and the console line that says why a certificate was refused."""

from __future__ import annotations

import os
import ssl
from typing import Tuple

import certifi

TLS_FAILED_HELP = (
    "WebSocket connection failed: the server's certificate could not be verified ({check}; "
    "trusted roots: {roots}). {fix} The agent will retry automatically, and never connects "
    "without a verified certificate."
)
# What to do, by OpenSSL's X509_V_ERR code of the check that failed.
TLS_FIX_CLOCK = "Check that this computer's date, time and time zone are right."
TLS_FIX_INTERCEPTED = (
    "Something between this computer and the MA Tracker cloud answered with its own "
    "certificate: a company proxy, antivirus HTTPS scanning, or a Wi-Fi login page. Log in "
    "to the Wi-Fi page, or ask your IT department to let {host} through."
)
TLS_FIX_UNKNOWN_ISSUER = (
    "The certificate's issuer is not among the trusted roots. If your network inspects "
    "HTTPS (company proxy, antivirus), ask your IT department to let {host} through."
)
TLS_FIX_WRONG_NAME = (
    "The certificate is for another name: check RELAY_URL in config.env, or a Wi-Fi login "
    "page or proxy is answering instead of the MA Tracker cloud."
)
TLS_FIX_OTHER = "Check RELAY_URL in config.env and your network; if it persists, contact MA Tracker support."
TLS_FIXES = {
    9: TLS_FIX_CLOCK,
    10: TLS_FIX_CLOCK,
    18: TLS_FIX_INTERCEPTED,
    19: TLS_FIX_INTERCEPTED,
    2: TLS_FIX_UNKNOWN_ISSUER,
    20: TLS_FIX_UNKNOWN_ISSUER,
    21: TLS_FIX_UNKNOWN_ISSUER,
    62: TLS_FIX_WRONG_NAME,
}

SYSTEM_ROOTS = "the system's certificate store"
CERTIFI_ROOTS = "certifi's CA bundle (this Python has no certificate store of its own)"


def _system_has_roots(context: ssl.SSLContext) -> bool:
    """Whether create_default_context() found CA certificates: loaded ones (a CA file, the Windows
    store), or a CA folder OpenSSL reads on demand. A python.org macOS build whose "Install
    Certificates" step never ran has neither: its OpenSSL points at a cert.pem that does not exist."""
    if context.cert_store_stats().get("x509_ca", 0):
        return True
    capath = ssl.get_default_verify_paths().capath
    if capath and os.path.isdir(capath):
        with os.scandir(capath) as entries:
            return any(entry.is_file() for entry in entries)
    return False


def tls_context() -> Tuple[ssl.SSLContext, str]:
    """The TLS context for the relay and where its trusted roots come from: the system's store, or,
    when this Python build has none, certifi's bundle. Certificate and host name are always checked
    (create_default_context: CERT_REQUIRED, check_hostname)."""
    context = ssl.create_default_context()
    if _system_has_roots(context):
        return context, SYSTEM_ROOTS
    context.load_verify_locations(cafile=certifi.where())
    return context, CERTIFI_ROOTS


def tls_help(exc: ssl.SSLCertVerificationError, roots: str, host: str) -> str:
    """The console line for a certificate the agent refused: which check failed and what to do."""
    check = exc.verify_message or exc.reason or "unknown reason"
    fix = TLS_FIXES.get(exc.verify_code, TLS_FIX_OTHER).format(host=host)
    return TLS_FAILED_HELP.format(check=check, roots=roots, fix=fix)
