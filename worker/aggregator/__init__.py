"""The aggregator: usage events in, a consumption store, estimated cost, anomalies and alerts out.

Where things are:

- ``service`` runs the process (``run_aggregator``); ``commands`` holds the CLI verbs.
- ``broker`` declares its queues; ``consumer`` batches messages and acks them once stored; ``messages``
  parses them; ``handlers`` says what a stored batch leads to.
- ``store`` is the async store over ``db`` (SQLite or PostgreSQL, one thread per connection),
  ``migrations`` (versioned schema), ``writes`` and ``reads`` (the SQL); ``records`` the plain rows.
- ``pricing`` (the versioned price table) and ``consumption`` (the query's result and its cost).
- ``anomalies`` (pure rules), ``detector`` (feeds them after each batch), ``alerts`` (the alert message),
  ``publisher`` (the alerts outbox to the broker).
- ``api`` and ``openapi`` (HTTP), ``metrics`` (Prometheus), ``settings`` (thresholds, budgets, batching),
  ``bench`` (ingest throughput).
"""
