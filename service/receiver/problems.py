"""Typed errors with a stable code and status, rendered by one function as RFC 9457 problem+json."""

from __future__ import annotations

import json
from typing import ClassVar

from starlette.responses import Response

__all__ = [
    "BodyTooLarge",
    "ClientDisconnected",
    "IngestFailed",
    "InvalidEvent",
    "InvalidJSONBody",
    "MethodNotAllowed",
    "NotFound",
    "Problem",
    "RequestTimeout",
    "SignatureRejected",
    "Unavailable",
    "problem_response",
]


class Problem(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self, detail: str, *, code: str | None = None, status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.instance_code = code or self.code
        self.status_code = status or self.status
        self.headers = headers or {}


class SignatureRejected(Problem):
    status, code, title = 401, "signature_mismatch", "Signature verification failed"


class BodyTooLarge(Problem):
    status, code, title = 413, "body_too_large", "Request body too large"


class RequestTimeout(Problem):
    status, code, title = 408, "request_timeout", "Request body not received in time"


class ClientDisconnected(Problem):
    """Nobody receives this answer; it exists so a hang-up ends the request quietly, not as a 500."""

    status, code, title = 400, "client_disconnected", "Client closed the connection before the whole body"


class InvalidJSONBody(Problem):
    status, code, title = 400, "invalid_json", "Body is not a UTF-8 JSON object"


class InvalidEvent(Problem):
    status, code, title = 400, "invalid_event", "Body is not a valid event envelope"


class Unavailable(Problem):
    status, code, title = 503, "unavailable", "Storage unavailable; nothing was acknowledged"


class IngestFailed(Problem):
    """The ingest script refused the delivery (it wrote nothing); retrying the same bytes fails the same way."""

    status, code, title = 500, "ingest_failed", "The delivery could not be stored; nothing was acknowledged"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(Problem):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


def problem_response(problem: Problem, request_id: str) -> Response:
    code = problem.instance_code
    body = {
        "type": f"https://docs.runinfra.ai/webhooks/problems#{code}",
        "title": problem.title,
        "status": problem.status_code,
        "detail": problem.detail,
        "code": code,
        "request_id": request_id,
    }
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=problem.status_code,
        headers=problem.headers,
        media_type="application/problem+json",
    )
