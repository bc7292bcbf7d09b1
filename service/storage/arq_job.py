"""arq's job format, owned here: the function name, arq's keys, the job id and the JSON job itself.

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
    "QUEUE",
    "RETRY",
    "deserialize",
    "job_id",
    "payload",
    "payload_around_generation",
    "serialize",
]

FUNCTION = "process_event"  # the one arq function every event job calls: process_event(event_id, generation)
QUEUE = "arq:queue"  # zset job_id -> score (ms when runnable)
JOB = "arq:job:"  # + job_id: serialized job (JSON), PX = expires
IN_PROGRESS = "arq:in-progress:"  # + job_id: set while a worker runs it; PX = job timeout + 10 s
RETRY = "arq:retry:"  # + job_id: arq's try counter


def job_id(event_id: str, generation: int) -> str:
    """arq job id of one generation of an event (replay bumps the generation)."""
    return f"{event_id}@{generation}"


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
