"""Benchmarks of queue-rescue against Postfix's own tools (see bench/README.md)."""
