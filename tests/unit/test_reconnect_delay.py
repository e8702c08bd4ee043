"""The reconnect backoff: its exponent is the count of failed attempts in a row, capped, with jitter."""

from __future__ import annotations

import pytest

from worker.broker.connection import RECONNECT_CAP_S, reconnect_delay_s


def test_waits_double_from_the_first_failure_up_to_the_cap() -> None:
    longest = [reconnect_delay_s(failures, 1.0) for failures in range(1, 9)]
    assert longest == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    shortest = [reconnect_delay_s(failures, 0.0) for failures in range(1, 9)]
    assert shortest == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5, 2.5])


def test_jitter_stays_between_half_and_all_of_the_wait_and_never_overflows() -> None:
    assert reconnect_delay_s(3, 0.5) == pytest.approx(0.6)
    assert reconnect_delay_s(10_000, 1.0) == RECONNECT_CAP_S
    assert reconnect_delay_s(2, 7.0) == reconnect_delay_s(2, 1.0)
    assert reconnect_delay_s(2, -1.0) == reconnect_delay_s(2, 0.0)


def test_there_is_no_wait_before_the_first_failure() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        reconnect_delay_s(0, 0.5)
