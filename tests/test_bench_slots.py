"""The slot-cycle split (bench/slots.py) from made-up job step times: each step, and a freed slot's refill."""

from __future__ import annotations

import pytest

from bench.slots import segments


def test_steps_are_the_gaps_between_a_jobs_timestamps() -> None:
    # job start, event start, call start, call end, event end, job end (seconds)
    records: list[list[float | None]] = [[0.000, 0.002, 0.010, 0.210, 0.220, 0.223],
                                         [0.001, 0.005, 0.011, 0.215, 0.221, 0.224]]
    s = segments(records, slots=2)
    assert s["arq start"]["mean_ms"] == pytest.approx(3.0)
    assert s["before call"]["median_ms"] == pytest.approx(7.0)
    assert s["call"]["mean_ms"] == pytest.approx(202.0)
    assert s["after call"]["mean_ms"] == pytest.approx(8.0)
    assert s["arq finish"]["mean_ms"] == pytest.approx(3.0)
    assert "refill" not in s  # no job took a freed slot


def test_a_freed_slot_is_matched_with_the_job_that_took_it_next() -> None:
    # two slots: the third job starts 4 ms after the first end, the fourth 1 ms after the second end
    records: list[list[float | None]] = [[0.0, 0.0, None, None, 0.0, 0.100], [0.0, 0.0, None, None, 0.0, 0.200],
                                         [0.104, 0.104, None, None, 0.3, 0.300], [0.201, 0.201, None, None, 0.4, 0.400]]
    s = segments(records, slots=2)
    assert s["refill"]["mean_ms"] == pytest.approx(2.5)
    assert "call" not in s  # jobs without a gateway call count only for the refill
