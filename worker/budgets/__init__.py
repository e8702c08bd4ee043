"""Spend control: budgets enforced by the worker before each provider call, and a cap on calls in flight.

- ``rules``: what a budget is (scope, limit, period, action, in-flight cap) and its period's bounds.
- ``estimate``: the worst-case cost of one call, from the request and the price table.
- ``ledger``: the store's side, atomic reservations against every budget that applies, settle, release,
  lease renewal, and what is spent and reserved.
- ``guard``: the pipeline's call hook, with a cached view of which workspaces have budgets.
- ``admin``: set, list and delete budgets (``byok budgets``, the aggregator's API).
"""
