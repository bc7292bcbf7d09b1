"""The open-loop generator's arithmetic (bench/openloop.py): its schedule, its percentiles, and latencies counted
from the due time. No sockets and no clock: the timings are made up."""

from __future__ import annotations

from array import array

from bench.openloop import EARLY_NS, NS, Timings, content_length, due_ns, due_until, percentile, summarise


def _timings(due: list[int], sent: list[int], done: list[int], queued: list[int] | None = None) -> Timings:
    n = len(due)
    return Timings(array("q", due), array("q", sent), array("q", done), array("h", [202 if d else 0 for d in done]),
                   array("b", queued or [0] * n))


def test_due_times_follow_the_rate_without_drift() -> None:
    rate = 3000.0
    assert due_ns(0, 0, rate) == 0
    assert due_ns(0, 3000, rate) == NS  # exactly one second later: computed from the index, not accumulated
    assert due_ns(5, 1, rate) == 5 + 333_333


def test_due_until_counts_what_is_due_within_the_early_window() -> None:
    rate, start, n = 1000.0, 10 * NS, 100  # one request every millisecond
    assert due_until(start, rate, start - EARLY_NS - 1, n) == 0
    assert due_until(start, rate, start - EARLY_NS, n) == 1
    # at start + 2.6 ms: requests 0, 1, 2 are past due and 3 (due at 3 ms) is within the half-tick window
    assert due_until(start, rate, start + 2_600_000, n) == 4
    assert due_until(start, rate, start + 2_400_000, n) == 3
    assert due_until(start, rate, start + 10 * NS, n) == n


def test_due_until_agrees_with_due_ns_at_fractional_rates() -> None:
    rate, n = 2345.6, 10_000
    for now in range(0, 4 * NS, 7_777_777):
        k = due_until(0, rate, now, n)
        assert k == n or due_ns(0, k, rate) > now + EARLY_NS
        assert k == 0 or due_ns(0, k - 1, rate) <= now + EARLY_NS


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 1001))  # 1..1000
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([7], 99.9) == 7
    assert percentile([], 50) != percentile([], 50)  # nan


def test_latency_counts_from_the_due_time_when_the_send_was_late() -> None:
    # Request 1 was due at 1 ms but went out 9 ms late (the server held every connection): its latency is
    # 10 ms from its due time, though the server answered 1 ms after it was sent.
    t = _timings(due=[0, 1_000_000], sent=[0, 10_000_000], done=[1_000_000, 11_000_000], queued=[0, 1])
    s = summarise(t, rate=1000.0)
    assert s["max_ms"] == 10.0
    assert s["service_p999_ms"] == 1.0
    assert s["late_waiting_for_connection"] == 1
    assert s["late_by_generator"] == 0


def test_an_early_send_counts_from_the_send() -> None:
    t = _timings(due=[1_000_000], sent=[600_000], done=[1_100_000])
    assert summarise(t, rate=1000.0)["p50_ms"] == 0.5


def test_late_sends_by_the_generator_and_unanswered_requests_are_counted() -> None:
    due = [i * 1_000_000 for i in range(4)]
    sent = [0, 1_000_000, 4_500_000, 3_000_000]  # request 2 left 2.5 ms late, not for want of a connection
    done = [500_000, 1_500_000, 5_000_000, 0]  # request 3 never answered
    s = summarise(_timings(due, sent, done), rate=1000.0)
    assert s["late_by_generator"] == 1
    assert s["answered"] == 3
    assert s["statuses"] == {"202": 3, "none": 1}
    assert s["p50_ms"] == 0.5
    assert s["max_ms"] == 3.0


def test_content_length_of_a_response_head() -> None:
    assert content_length(b"http/1.1 202 accepted\r\ncontent-length: 42\r\nx: y") == 42
    assert content_length(b"http/1.1 202 accepted\r\ncontent-length: 7") == 7
    assert content_length(b"http/1.1 204 no content\r\nx: y") == 0
