"""The TWS server versions the agent's TWS suites run at (the version matrix of DESIGN.md 3 / 6).

- 176: an older TWS (text protocol; ib_async's range)
- 200: the last text-only version
- 203: the first with protobuf orders (place/cancel, openOrder, orderStatus, errors)
- TESTED_MAX_SERVER_VERSION: the highest the agent offers, what a current TWS speaks

The order, market-data and account suites run at DEFAULT_VERSIONS in the default test command
(`./run_tests.sh`); `TWS_VERSIONS=all` runs the whole MATRIX, `TWS_VERSIONS=203,226` a list.
A suite opts in with `load_tests = at_tws_versions()`: each of its test classes built on
`AtTwsVersion` runs once per selected version, named `<Class>_v<version>`; a class that sets
`tws_versions = (...)` runs at exactly those (the quick end-to-end check runs the whole MATRIX in
every run; the 1,000-contract batch only at the newest), narrowed by an explicit TWS_VERSIONS.
"""

from __future__ import annotations

import os
import unittest
from typing import Optional, Tuple

from agent.ib.session import TESTED_MAX_SERVER_VERSION

OLDER_TWS, LAST_TEXT_ONLY, FIRST_PROTOBUF_ORDERS = 176, 200, 203
MATRIX: Tuple[int, ...] = (OLDER_TWS, LAST_TEXT_ONLY, FIRST_PROTOBUF_ORDERS, TESTED_MAX_SERVER_VERSION)
DEFAULT_VERSIONS: Tuple[int, ...] = (LAST_TEXT_ONLY, TESTED_MAX_SERVER_VERSION)


def selected_versions() -> Tuple[int, ...]:
    """The versions this run covers: TWS_VERSIONS (`all` or a comma list), else DEFAULT_VERSIONS."""
    raw = os.environ.get("TWS_VERSIONS", "").strip()
    if not raw:
        return DEFAULT_VERSIONS
    if raw == "all":
        return MATRIX
    return tuple(int(part) for part in raw.split(",") if part.strip())


class AtTwsVersion:
    """Mixin for a TestCase that starts tests.fake_tws: at `tws_version`, or the fake's default."""

    tws_version: Optional[int] = None  # None: the fake's default, the newest version
    tws_versions: Optional[Tuple[int, ...]] = None

    def fake_tws_options(self, **options) -> dict:
        if self.tws_version is not None:
            options.setdefault("max_server_version", self.tws_version)
        return options

    @property
    def expected_server_version(self) -> int:
        return self.tws_version or TESTED_MAX_SERVER_VERSION


def at_tws_versions():
    """A `load_tests` for a test module: every versioned TestCase class once per selected version."""

    def load_tests(loader: unittest.TestLoader, standard_tests, pattern) -> unittest.TestSuite:
        suite = unittest.TestSuite()
        for test_class in _test_classes(standard_tests):
            if not issubclass(test_class, AtTwsVersion):
                suite.addTests(loader.loadTestsFromTestCase(test_class))
                continue
            for version in _versions_for(test_class):
                name = f"{test_class.__name__}_v{version}"
                per_version = type(
                    name,
                    (test_class,),
                    {"tws_version": version, "__qualname__": name, "__module__": test_class.__module__},
                )
                suite.addTests(loader.loadTestsFromTestCase(per_version))
        return suite

    return load_tests


def _versions_for(test_class) -> Tuple[int, ...]:
    """A class's own `tws_versions`, narrowed by an explicit TWS_VERSIONS (the fast tier sets the newest):
    those of its versions that were asked for, else its newest."""
    own = test_class.tws_versions
    if own is None:
        return selected_versions()
    if not os.environ.get("TWS_VERSIONS", "").strip():
        return own
    asked = selected_versions()
    return tuple(v for v in own if v in asked) or own[-1:]


def _test_classes(tests) -> list:
    found: dict = {}
    stack = [tests]
    while stack:
        item = stack.pop()
        if isinstance(item, unittest.TestSuite):
            stack.extend(item)
        else:
            found.setdefault(type(item), None)
    return sorted(found, key=lambda cls: cls.__name__)
