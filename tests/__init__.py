"""Test suite and test doubles (fake TWS, fake MA Tracker relay). Run with ./run_tests.sh."""
