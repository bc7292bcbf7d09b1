"""Every Redis key the project uses, with its type and lifetime: the one place to look.

All of our keys start with ``rwh:``. arq's own keys (``arq:queue``, ``arq:job:<id>``, ``arq:in-progress:<id>``,
``arq:retry:<id>``) are named here too because the ingest script writes arq jobs directly; their format
is defined in ``arq_job``.
"""

from __future__ import annotations

# arq's keys and job id belong to arq's job format (arq_job.py, pinned arq 0.28.0); named here too so this
# module still lists every key.
from runinfra_webhooks.service.storage.arq_job import FUNCTION as PROCESS_EVENT
from runinfra_webhooks.service.storage.arq_job import IN_PROGRESS as ARQ_IN_PROGRESS
from runinfra_webhooks.service.storage.arq_job import JOB as ARQ_JOB
from runinfra_webhooks.service.storage.arq_job import QUEUE as ARQ_QUEUE
from runinfra_webhooks.service.storage.arq_job import RETRY as ARQ_RETRY
from runinfra_webhooks.service.storage.arq_job import job_id

__all__ = [
    "ALERT_DEAD_CURSOR",
    "ALERT_GATES_DUE",
    "ALERT_OUTBOX",
    "ARQ_IN_PROGRESS",
    "ARQ_JOB",
    "ARQ_QUEUE",
    "ARQ_RETRY",
    "AUDIT_BASE",
    "AUDIT_HEAD",
    "AUDIT_STREAM",
    "CONSOLE_INDEX",
    "CORPORA",
    "DEAD_LETTERS",
    "DEPLOYMENTS",
    "FLOW_ROUTES",
    "INFLIGHT",
    "IX_EXPIRY",
    "IX_IDS",
    "IX_TYPES",
    "PARKED",
    "PAUSED_ALL",
    "PAUSED_TYPES",
    "PROCESS_EVENT",
    "READY_PROBE",
    "alert",
    "alert_dead_seen",
    "alert_gate",
    "audit_body",
    "console_session",
    "corpora_by_model",
    "corpus_claims",
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
    "flow_breaker",
    "flow_hold",
    "flow_leases",
    "flow_rate",
    "followup_reply",
    "ix_state",
    "ix_type",
    "job_id",
]

PREFIX = "rwh:"

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


INFLIGHT = f"{PREFIX}inflight"  # zset event_id -> ms of last state change, while queued/processing/retrying
DEAD_LETTERS = f"{PREFIX}dead"  # zset event_id -> ms dead-lettered
AUDIT_STREAM = f"{PREFIX}audit"  # stream: one entry per verified delivery (hash-chained)
AUDIT_HEAD = f"{PREFIX}audit:head"  # hash: seq, hash of the newest entry
AUDIT_BASE = f"{PREFIX}audit:base"  # hash: seq, hash of the last entry trimmed by retention


def audit_body(sha256_hex: str) -> str:
    """String: a duplicate delivery's raw body, kept once however often it is replayed; audit entries of
    duplicates reference it by this digest (``body_ref``). PX = 2 x RUNINFRA_AUDIT_RETENTION from the last
    reference, so it outlives every entry that references it (those are trimmed after one retention)."""
    return f"{PREFIX}audit:body:{sha256_hex}"


READY_PROBE = f"{PREFIX}ready-probe"  # string: ms of the last /readyz write probe. PX = 60 s
# --- console indexes ------------------------------------------------------------------------------
# Written by the same atomic scripts that change an event's state (ingest.lua, records.py), so listing by
# time, state and type never scans. The per-state sets together are the time index of every retained
# event (a page of "all events" merges their newest entries). Bounded by the event retention: the sweep
# removes the entries of events whose record expired (IX_EXPIRY says which, without looking at the
# others). Cost per stored event (docs/BENCHMARKS.md): one member in IX_IDS, one ix_type and one ix_state
# zset (384 B for the three with a 30-character id), one in IX_EXPIRY once the record has a TTL, the
# audit entry's id in the record, and a history field of ~90 B per worker transition (capped); ingest pays three
# ZADDs inside its script for them (four when the record gets a TTL at once).
CONSOLE_INDEX = f"{PREFIX}ix:"  # the prefix the scripts build the per-state and per-type names from
IX_IDS = f"{PREFIX}ix:ids"  # zset event_id -> 0: ordered by id, for the id-prefix search (ZRANGE BYLEX)
IX_TYPES = f"{PREFIX}ix:types"  # set of event types a worker has seen (the console's type filter); a few members
# zset "<event_id> <type>" -> ms when the record expires; only records that have a TTL (succeeded, ignored,
# dead-lettered). The type is in the member because the record (and its type) is gone when the sweep
# needs it to find the per-type entry.
IX_EXPIRY = f"{PREFIX}ix:expiry"


def ix_state(state: str) -> str:
    """Zset event_id -> ms received, of the events now in ``state``. Moved by every state transition."""
    return f"{CONSOLE_INDEX}state:{state}"


def ix_type(event_type: str) -> str:
    """Zset event_id -> ms received, of the events of one type."""
    return f"{CONSOLE_INDEX}type:{event_type}"


def console_session(session_hash: str) -> str:
    """Hash: one console session (its CSRF token, created ms), under the SHA-256 of the cookie value.

    EX = RUNINFRA_CONSOLE_SESSION_TTL; deleted by POST /logout.
    """
    return f"{PREFIX}console:session:{session_hash}"


# --- reactions -----------------------------------------------------------------------------------
DEPLOYMENTS = f"{PREFIX}deployments"  # set of deployment ids
CORPORA = f"{PREFIX}corpora"  # set of corpus collection names (the console lists them)


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


def corpus_claims(collection: str, revision: str) -> str:
    """Hash: batch index -> ``<expiry ms>:<owner>`` lease of a job working on it, and ``next``, the first batch
    never handed out (``batch_claims``). Deleted with the progress bitmap it goes with."""
    return f"{PREFIX}corpus:{collection}:claims:{revision}"


def corpus_progress(collection: str, revision: str) -> str:
    """String used as a bitmap: bit i is set once batch i of that revision's build is stored (the resume
    point; batches may finish in any order). Deleted when the build flips or is cancelled by a load."""
    return f"{PREFIX}corpus:{collection}:progress:{revision}"


def followup_reply(event_id: str) -> str:
    """String: the follow-up reply text made by the chat step, so a retry does not call chat again.

    EX = RUNINFRA_EVENT_RETENTION.
    """
    return f"{PREFIX}followup:{event_id}:reply"


# --- flow control toward the gateway (shared by every worker) -----------------------------------
def flow_rate(route: str) -> str:
    """String: the route's next allowed call time in ms (GCRA "theoretical arrival time"). PX = one interval
    past it, so an idle route leaves nothing behind."""
    return f"{PREFIX}flow:{route}:rate"


def flow_leases(route: str) -> str:
    """Zset: lease id -> ms when it expires; one member per call in flight. A crashed worker's lease just
    expires. PX = the longest lease, renewed on every acquire."""
    return f"{PREFIX}flow:{route}:leases"


def flow_hold(route: str) -> str:
    """String: ms until which nobody calls the route (a 429's Retry-After). PX = the same moment."""
    return f"{PREFIX}flow:{route}:hold"


def flow_breaker(route: str) -> str:
    """Hash: state (closed/open/half_open), failures (consecutive transient), open_until, probe_until (ms).
    No TTL: one small hash per route."""
    return f"{PREFIX}flow:{route}:breaker"


FLOW_ROUTES = f"{PREFIX}flow:routes"  # set of routes that have breaker state (for metrics)

# --- pause per event type ------------------------------------------------------------------------
PAUSED_TYPES = f"{PREFIX}paused:types"  # set of paused event types; "*" pauses every type. No TTL.
PAUSED_ALL = "*"
PARKED = f"{PREFIX}paused:events"  # zset event_id -> ms parked: paused events taken out of INFLIGHT until resumed

# --- alerts to the operator ------------------------------------------------------------------------
ALERT_OUTBOX = f"{PREFIX}alerts:outbox"  # zset alert id -> ms of its next delivery attempt


def alert(alert_id: str) -> str:
    """Hash: body (the signed envelope's JSON), attempts, created_ms. Deleted once delivered;
    EX = 7 days in case the alert endpoint never comes back."""
    return f"{PREFIX}alert:{alert_id}"


def alert_gate(alert_type: str, subject: str) -> str:
    """Hash: last_ms (when the last alert of this kind went out), suppressed (count since), data (JSON of
    the newest suppressed one). EX = 7 days."""
    return f"{PREFIX}alert-gate:{alert_type}:{subject}"


ALERT_GATES_DUE = f"{PREFIX}alerts:gates-due"  # zset gate key -> ms its window ends, while it holds suppressed
ALERT_DEAD_CURSOR = f"{PREFIX}alerts:dead-cursor"  # string: ms of the newest dead letter already alerted


def alert_dead_seen(event_id: str, generation: str) -> str:
    """String marker: this dead letter (event, generation) was alerted. EX = 1 day."""
    return f"{PREFIX}alerts:dead-seen:{event_id}:{generation}"
