"""The benchmark harness: `jobrunner bench SCENARIO` (see benchmarks/README.md)."""
