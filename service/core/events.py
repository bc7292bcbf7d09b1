"""The event envelope and one typed model per catalogued type.

Parsing happens in three steps, each with its own answer: bytes -> JSON object (``invalid_json``),
object -> envelope (``invalid_event``), envelope -> typed event (``invalid_payload``, dead-lettered).
Unknown fields are ignored everywhere; unknown types are valid envelopes that no model claims.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

__all__ = [
    "CATALOGUE",
    "MAX_CREATED",
    "DeploymentCreated",
    "DeploymentDeleted",
    "DeploymentFailed",
    "DeploymentReady",
    "DeploymentUpdated",
    "Envelope",
    "Event",
    "InvalidJSON",
    "TranscriptionCompleted",
    "parse_event",
    "parse_event_json",
    "parse_json_object",
]

MAX_CREATED = 10**12 - 1  # the largest Unix time a signature's ``t`` can carry (12 digits)

EventId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,255}$")]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=255)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Envelope(_Model):
    """What every delivery must have, whatever its type."""

    id: EventId
    type: EventType
    # Bounded like the signature's timestamp (at most 12 digits): every later comparison of ``created`` is
    # exact (Lua compares it as a zero-padded digit string), and no value can overflow what Redis stores.
    created: StrictInt = Field(ge=0, le=MAX_CREATED)
    data: dict[str, Any]
    object: str | None = None
    api_version: str | None = None
    workspace_id: str | None = None


# --- data shapes ---------------------------------------------------------------------------------
def _unicode_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            msg = "not Unicode text (a lone surrogate such as \\ud800)"
            raise ValueError(msg) from None
    elif isinstance(value, list):
        for item in value:
            _unicode_text(item)
    return value


class _Data(_Model):
    """A ``data`` shape. JSON may escape a lone surrogate (``"\\udce9"``); such a string can never be
    encoded to reach Redis or the gateway, so it fails the model (dead-lettered at once) rather than
    failing every retry of the job."""

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_unicode(cls, value: Any) -> Any:
        return _unicode_text(value)


class DeploymentRef(_Data):
    deployment_id: str
    pipeline_id: str


class DeploymentInfo(DeploymentRef):
    model: str
    # A modality RunInfra adds later must not be rejected, so this stays a plain string.
    modality: str


class DeploymentCreatedData(DeploymentInfo):
    status: str


class DeploymentReadyData(DeploymentInfo):
    revision: str
    operations: list[str]


class DeploymentUpdatedData(DeploymentInfo):
    revision: str
    previous_revision: str


class DeploymentError(_Data):
    code: str
    message: str


class DeploymentFailedData(DeploymentInfo):
    error: DeploymentError


class TranscriptionCompletedData(_Data):
    request_id: str
    pipeline_id: str
    model: str
    text: str
    language: str | None = None
    duration_seconds: float | None = None


# --- typed events --------------------------------------------------------------------------------
class DeploymentCreated(Envelope):
    type: Literal["deployment.created"]
    data: DeploymentCreatedData  # type: ignore[assignment]


class DeploymentReady(Envelope):
    type: Literal["deployment.ready"]
    data: DeploymentReadyData  # type: ignore[assignment]


class DeploymentUpdated(Envelope):
    type: Literal["deployment.updated"]
    data: DeploymentUpdatedData  # type: ignore[assignment]


class DeploymentFailed(Envelope):
    type: Literal["deployment.failed"]
    data: DeploymentFailedData  # type: ignore[assignment]


class DeploymentDeleted(Envelope):
    type: Literal["deployment.deleted"]
    data: DeploymentRef  # type: ignore[assignment]


class TranscriptionCompleted(Envelope):
    type: Literal["transcription.completed"]
    data: TranscriptionCompletedData  # type: ignore[assignment]


Event = Annotated[
    DeploymentCreated
    | DeploymentReady
    | DeploymentUpdated
    | DeploymentFailed
    | DeploymentDeleted
    | TranscriptionCompleted,
    Field(discriminator="type"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
_ENVELOPE: TypeAdapter[Envelope] = TypeAdapter(Envelope)

CATALOGUE: frozenset[str] = frozenset(
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (
        DeploymentCreated,
        DeploymentReady,
        DeploymentUpdated,
        DeploymentFailed,
        DeploymentDeleted,
        TranscriptionCompleted,
    )
)


class InvalidJSON(ValueError):
    """The body is not a UTF-8 JSON object."""


def _reject_constant(name: str) -> Any:
    msg = f"non-standard JSON constant {name}"
    raise InvalidJSON(msg)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict UTF-8 JSON object, or ``InvalidJSON`` (also for NaN, huge numbers, absurd nesting)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and ints beyond sys.get_int_max_str_digits().
        raise InvalidJSON(str(exc)[:200]) from None
    if not isinstance(value, dict):
        msg = "the body is JSON but not an object"
        raise InvalidJSON(msg)
    return value


# Tokens pydantic's JSON parser accepts and ``parse_json_object`` refuses: a body holding one anywhere (even
# inside a string) takes the careful path, so the quick one can never accept what the careful one refuses.
_NON_STANDARD = (b"NaN", b"Infinity")


def parse_event_json(body: bytes) -> Event | None:
    """The typed event straight from the raw bytes (pydantic's JSON parser, in Rust), or None when the body
    is anything but a valid catalogued event: then ``parse_json_object`` and the two models below give the
    precise answer. For a body accepted here they would give this same event."""
    if _NON_STANDARD[0] in body or _NON_STANDARD[1] in body:
        return None
    try:
        return _EVENT.validate_json(body)
    except ValidationError:
        return None


def parse_envelope(obj: dict[str, Any]) -> Envelope:
    """Raises pydantic.ValidationError when id, type, created or data is missing or malformed."""
    return _ENVELOPE.validate_python(obj)


def parse_event(obj: dict[str, Any]) -> Event:
    """The typed event of a catalogued type; raises pydantic.ValidationError when ``data`` does not fit."""
    return _EVENT.validate_python(obj)
