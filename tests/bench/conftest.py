"""Benchmarks are run by ``python -m tests.bench.run`` (``make bench``), never collected by pytest."""

collect_ignore_glob = ["*.py"]
