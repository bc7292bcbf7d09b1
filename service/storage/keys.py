"""Every Redis key the project uses, with its type and lifetime: the one place to look.

All of our keys start with ``rwh:``. arq's own keys (``arq:queue``, ``arq:job:<id>``, ``arq:in-progress:<id>``,
``arq:retry:<id>``) are named here too because the ingest script writes arq jobs directly.
"""

from __future__ import annotations

__all__ = [
    "ARQ_IN_PROGRESS",
    "ARQ_JOB",
    "ARQ_QUEUE",
    "ARQ_RETRY",
    "AUDIT_BASE",
    "AUDIT_HEAD",
    "AUDIT_STREAM",
    "DEAD_LETTERS",
    "DEPLOYMENTS",
    "INFLIGHT",
    "PROCESS_EVENT",
    "corpora_by_model",
    "corpus_docs",
    "corpus_ids",
    "corpus_meta",
    "corpus_progress",
    "corpus_vector_slots",
    "corpus_vectors",
    "dedup",
    "deployment",
    "deployment_history",
    "event",
    "followup_reply",
    "job_id",
]

PREFIX = "rwh:"

# arq's keys (arq.constants, pinned arq 0.28.0)
ARQ_QUEUE = "arq:queue"  # zset job_id -> score (ms when runnable)
ARQ_JOB = "arq:job:"  # + job_id: serialized job (JSON), PX = expires
ARQ_IN_PROGRESS = "arq:in-progress:"  # + job_id: set while a worker runs it; PX = job timeout + 10 s
ARQ_RETRY = "arq:retry:"  # + job_id: arq's try counter
PROCESS_EVENT = "process_event"  # the one arq function every event job calls

# --- receiver ------------------------------------------------------------------------------------
def dedup(event_id: str) -> str:
    """String: ms receive time. EX = RUNINFRA_DEDUP_TTL (default 7 days)."""
    return f"{PREFIX}dedup:{event_id}"


def event(event_id: str) -> str:
    """Hash: the event record (body, type, state, attempts, generation, ...).

    No TTL while queued/processing/retrying; EX = RUNINFRA_EVENT_RETENTION once succeeded or ignored,
    RUNINFRA_DEAD_LETTER_RETENTION once dead-lettered.
    """
    return f"{PREFIX}event:{event_id}"


def job_id(event_id: str, generation: int) -> str:
    """arq job id of one generation of an event (replay bumps the generation)."""
    return f"{event_id}@{generation}"


INFLIGHT = f"{PREFIX}inflight"  # zset event_id -> ms of last state change, while queued/processing/retrying
DEAD_LETTERS = f"{PREFIX}dead"  # zset event_id -> ms dead-lettered
AUDIT_STREAM = f"{PREFIX}audit"  # stream: one entry per verified delivery (hash-chained)
AUDIT_HEAD = f"{PREFIX}audit:head"  # hash: seq, hash of the newest entry
AUDIT_BASE = f"{PREFIX}audit:base"  # hash: seq, hash of the last entry trimmed by retention

# --- reactions -----------------------------------------------------------------------------------
DEPLOYMENTS = f"{PREFIX}deployments"  # set of deployment ids


def deployment(deployment_id: str) -> str:
    """Hash: current state of one deployment. No TTL."""
    return f"{PREFIX}deployment:{deployment_id}"


def deployment_history(deployment_id: str) -> str:
    """List (capped at 100): JSON of each event applied or skipped as out of order."""
    return f"{PREFIX}deployment:{deployment_id}:history"


def corpora_by_model(model: str) -> str:
    """Set of collection names bound to a model."""
    return f"{PREFIX}corpus-model:{model}"


def corpus_meta(collection: str) -> str:
    """Hash: model, revision (the active, fully embedded one)."""
    return f"{PREFIX}corpus:{collection}"


def corpus_ids(collection: str) -> str:
    """List of document ids in load order (batches are slices of it)."""
    return f"{PREFIX}corpus:{collection}:ids"


def corpus_docs(collection: str) -> str:
    """Hash: document id -> text."""
    return f"{PREFIX}corpus:{collection}:docs"


def corpus_vectors(collection: str, revision: str, version: int) -> str:
    """Hash: document id -> packed little-endian float32 vector, for one model revision built from one corpus
    version (the redis vector store). The version comes first: it has no colon, the revision may."""
    return f"{PREFIX}corpus:{collection}:vectors:{version}:{revision}"


def corpus_vector_slots(collection: str) -> str:
    """Set: ``<version>:<revision>`` of each ``corpus_vectors`` hash of the collection, so leftovers can be
    dropped without a SCAN."""
    return f"{PREFIX}corpus:{collection}:vector-slots"


def corpus_progress(collection: str, revision: str) -> str:
    """String used as a bitmap: bit i is set once batch i of that revision's build is stored (the resume
    point; batches may finish in any order). Deleted when the build flips or is cancelled by a load."""
    return f"{PREFIX}corpus:{collection}:progress:{revision}"


def followup_reply(event_id: str) -> str:
    """String: the follow-up reply text made by the chat step, so a retry does not call chat again.

    EX = RUNINFRA_EVENT_RETENTION.
    """
    return f"{PREFIX}followup:{event_id}:reply"
