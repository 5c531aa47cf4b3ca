"""Benchmarks of Layer Explorer against the naive way; see bench/README.md."""
