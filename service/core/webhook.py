"""The library API for verifying RunInfra webhooks inside any web app: ``Webhook(secret).construct_event``.

Pure: no Redis, no network, no environment. The service's receiver uses the same signature check and the
same models, so an app that verifies with this class accepts exactly what the service would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from runinfra_webhooks.service.core import signature
from runinfra_webhooks.service.core.events import (
    CATALOGUE,
    Envelope,
    Event,
    InvalidJSON,
    parse_envelope,
    parse_event,
    parse_json_object,
)
from runinfra_webhooks.service.core.signature import Outcome, Verification

__all__ = ["SIGNATURE_HEADER", "HeaderMapping", "InvalidEventError", "Webhook", "WebhookVerificationError", "sign"]

SIGNATURE_HEADER = "runinfra-signature"



class HeaderMapping(Protocol):
    """What ``headers`` may be: a dict, Starlette's, Django's or Flask's headers (anything with get and items)."""

    def get(self, key: str, /) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]: ...


Headers = HeaderMapping | str | bytes | None  # or the runinfra-signature value itself


class WebhookVerificationError(Exception):
    """The signature did not verify; ``code`` is the outcome (``signature_mismatch``, ``timestamp_too_old``...).

    The message names only the outcome: never a secret or an expected signature.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"webhook signature check failed: {outcome.value}")
        self.code = outcome.value
        self.outcome = outcome


class InvalidEventError(Exception):
    """A verified payload that is not an event.

    ``code`` is ``invalid_json``, ``invalid_event`` or ``invalid_payload``.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _secrets(secret: str | bytes | Sequence[str | bytes]) -> tuple[bytes, ...]:
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = tuple(s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items)
    if not keys or any(not k for k in keys):
        msg = "at least one non-empty webhook secret is required"
        raise ValueError(msg)
    return keys


def _header_value(headers: Headers) -> str | None:
    if headers is None or isinstance(headers, str):
        return headers
    if isinstance(headers, bytes):
        return headers.decode("latin-1")
    value = headers.get(SIGNATURE_HEADER)  # case-insensitive in Starlette's and Django's own mappings
    if value is None:
        for name, candidate in headers.items():
            if str(name).lower() == SIGNATURE_HEADER:
                value = candidate
                break
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _payload_bytes(payload: bytes | bytearray | memoryview | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


class Webhook:
    """Verifies ``runinfra-signature`` headers under one secret or several (while rotating)."""

    def __init__(self, secret: str | bytes | Sequence[str | bytes], *, tolerance: int = 300) -> None:
        if tolerance < 0:
            msg = "tolerance must be >= 0 seconds"
            raise ValueError(msg)
        self._secrets = _secrets(secret)
        self.tolerance = tolerance

    def __repr__(self) -> str:  # never the secrets
        return f"Webhook(<{len(self._secrets)} secret(s)>, tolerance={self.tolerance})"

    def verify(self, payload: bytes | bytearray | memoryview | str, headers: Headers, *,
               now: int | None = None) -> Verification:
        """The outcome of the signature check; never raises, whatever the input."""
        try:
            header = _header_value(headers)
            body = _payload_bytes(payload)
        except (AttributeError, TypeError, UnicodeError):
            return Verification(Outcome.MISSING_SIGNATURE)
        current = int(time.time()) if now is None else now
        return signature.verify(header, body, self._secrets, self.tolerance, current)

    def construct_event(self, payload: bytes | bytearray | memoryview | str, headers: Headers, *,
                        now: int | None = None) -> Event | Envelope:
        """Verify, then parse: the typed event of a catalogued type, an ``Envelope`` for any other type.

        Raises ``WebhookVerificationError`` when the signature does not verify and ``InvalidEventError``
        when a verified payload is not a valid event.
        """
        result = self.verify(payload, headers, now=now)
        if result.outcome is not Outcome.OK:
            raise WebhookVerificationError(result.outcome)
        try:
            obj = parse_json_object(_payload_bytes(payload))
        except InvalidJSON as exc:
            raise InvalidEventError("invalid_json", str(exc)) from None
        try:
            envelope = parse_envelope(obj)
        except ValidationError as exc:
            raise InvalidEventError("invalid_event", _first_error(exc)) from None
        if envelope.type not in CATALOGUE:
            return envelope
        try:
            return parse_event(obj)
        except ValidationError as exc:
            raise InvalidEventError("invalid_payload", _first_error(exc)) from None


def sign(payload: bytes | bytearray | memoryview | str, secret: str | bytes, timestamp: int | None = None) -> str:
    """The ``runinfra-signature`` header value for ``payload``; ``timestamp`` (Unix seconds) defaults to now."""
    return signature.sign(_payload_bytes(payload), secret, int(time.time()) if timestamp is None else timestamp)

