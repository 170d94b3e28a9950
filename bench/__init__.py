"""Benchmarks of the agent against the test doubles: `python -m bench.run [--quick] [--json PATH]`.
See docs/BENCHMARKS.md for what is measured, the latest figures and what limits them."""
