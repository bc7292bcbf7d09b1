"""arq's job format is owned by one module; it must stay what arq itself writes and reads."""

from __future__ import annotations

import pytest
from arq import constants
from arq.jobs import deserialize_job, serialize_job

from runinfra_webhooks.service.storage import arq_job


@pytest.mark.parametrize("event_id", ["evt_1", 'evt_"quoted"\\x', "evt_\u00e9\u2603", "e" * 255])
@pytest.mark.parametrize(("generation", "job_try"), [(0, 1), (7, 3)])
def test_payload_is_byte_for_byte_what_arq_serializes(event_id: str, generation: int, job_try: int) -> None:
    """The text the ingest and replay scripts store equals arq's serialize_job with our JSON serializer."""
    enqueue_ms = 1_764_000_000_123
    theirs = serialize_job(arq_job.FUNCTION, (event_id, generation), {}, job_try, enqueue_ms,
                           serializer=arq_job.serialize)
    assert arq_job.payload(event_id, generation, enqueue_ms, job_try).encode() == theirs


def test_payload_around_generation_joins_to_the_full_payload() -> None:
    """A script that computes the generation itself builds the same job from the two halves."""
    head, tail = arq_job.payload_around_generation("evt_9", 1_700_000_000_000)
    assert head + "12" + tail == arq_job.payload("evt_9", 12, 1_700_000_000_000)


def test_arq_reads_the_payload_back_as_a_process_event_call() -> None:
    """arq's own deserializer sees process_event(event_id, generation) with the enqueue time."""
    job = deserialize_job(arq_job.payload("evt_2", 4, 1_700_000_000_500, 2).encode(),
                          deserializer=arq_job.deserialize)
    assert (job.function, list(job.args), job.kwargs, job.job_try) == ("process_event", ["evt_2", 4], {}, 2)
    assert int(job.enqueue_time.timestamp() * 1000) == 1_700_000_000_500


def test_keys_are_arqs_own() -> None:
    """The queue and key prefixes are those of the pinned arq."""
    assert (arq_job.QUEUE, arq_job.JOB, arq_job.IN_PROGRESS, arq_job.RETRY) == (
        constants.default_queue_name, constants.job_key_prefix, constants.in_progress_key_prefix,
        constants.retry_key_prefix)


def test_part_payload_is_what_arq_serializes_for_a_build_part() -> None:
    """A helper job of a shared build is arq's own format too, for the second function."""
    theirs = serialize_job(arq_job.PART_FUNCTION, ("evt_3", 2, "kb", "rev_9"), {}, 1, 1_700_000_000_900,
                           serializer=arq_job.serialize)
    assert arq_job.part_payload("evt_3", 2, "kb", "rev_9", 1_700_000_000_900).encode() == theirs
    job = deserialize_job(theirs, deserializer=arq_job.deserialize)
    assert (job.function, list(job.args)) == ("build_part", ["evt_3", 2, "kb", "rev_9"])
