"""``make bench``: throughput, concurrency, CPU, latency, Vault and aggregator benchmarks (BENCHMARKS.md).

Not part of ``make test``: nothing here is named ``test_*`` and ``conftest.py`` keeps pytest out.
Entry point: ``python -m tests.bench.run``.
"""
