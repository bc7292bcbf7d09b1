"""arq's job format, owned here: the function names, arq's keys, the job ids and the JSON jobs themselves.

The receiver's ingest script, the replay and sweep scripts and the worker all take the job from this module,
so the format a stock arq 0.28 worker reads is written in one place. It is arq's own
(``arq.jobs.serialize_job``: a dict of ``t`` try, ``f`` function, ``a`` args, ``k`` kwargs, ``et`` enqueue
time in ms) with JSON instead of pickle.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "FUNCTION",
    "IN_PROGRESS",
    "JOB",
    "PART_FUNCTION",
    "QUEUE",
    "RETRY",
    "deserialize",
    "job_id",
    "part_job_id",
    "part_payload",
    "payload",
    "payload_around_generation",
    "serialize",
]

FUNCTION = "process_event"  # the one arq function every event job calls: process_event(event_id, generation)
# A helper job that shares one build of an event's re-embedding: build_part(event_id, generation, collection,
# revision). It owns no event state; the event's own job decides the outcome.
PART_FUNCTION = "build_part"
QUEUE = "arq:queue"  # zset job_id -> score (ms when runnable)
JOB = "arq:job:"  # + job_id: serialized job (JSON), PX = expires
IN_PROGRESS = "arq:in-progress:"  # + job_id: set while a worker runs it; PX = job timeout + 10 s
RETRY = "arq:retry:"  # + job_id: arq's try counter


def job_id(event_id: str, generation: int) -> str:
    """arq job id of one generation of an event (replay bumps the generation)."""
    return f"{event_id}@{generation}"


def part_job_id(event_id: str, generation: int, collection: str, revision: str, part: int) -> str:
    """arq job id of helper ``part`` (1, 2, ...) of the build of ``collection`` at ``revision`` for one
    generation of an event; fixed, so enqueuing it again while it waits or runs adds nothing."""
    return f"{job_id(event_id, generation)}#{collection}@{revision}#part{int(part)}"


def part_payload(event_id: str, generation: int, collection: str, revision: str, enqueue_ms: int) -> str:
    """The helper job as arq stores it (``serialize`` of arq's dict)."""
    return serialize({"t": 1, "f": PART_FUNCTION, "a": [event_id, int(generation), collection, revision], "k": {},
                      "et": int(enqueue_ms)}).decode()


def payload(event_id: str, generation: int, enqueue_ms: int, job_try: int = 1) -> str:
    """The job as arq stores it, byte for byte ``serialize`` of arq's dict.

    Built as text because it runs once per delivery (a json.dumps with non-default arguments builds a new
    encoder every call).
    """
    head, tail = payload_around_generation(event_id, enqueue_ms, job_try)
    return f"{head}{int(generation)}{tail}"


def payload_around_generation(event_id: str, enqueue_ms: int, job_try: int = 1) -> tuple[str, str]:
    """The job's text before and after the generation, for a script that computes the generation itself."""
    head = f'{{"t":{int(job_try)},"f":"{FUNCTION}","a":[{json.dumps(event_id)},'
    return head, f'],"k":{{}},"et":{int(enqueue_ms)}}}'


def serialize(obj: Any) -> bytes:
    """arq's ``job_serializer``: JSON, never pickle."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def deserialize(raw: bytes) -> Any:
    """arq's ``job_deserializer``."""
    return json.loads(raw)
