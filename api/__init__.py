"""Verify, parse and react to RunInfra's signed webhooks.

As a library, in any web app::

    from runinfra_webhooks import Webhook

    webhook = Webhook("whsec_...")
    event = webhook.construct_event(body_bytes, request.headers)

As a service: the ``runinfra-webhooks`` command (``serve``, ``worker``, ``dev``...), with your own reactions
written with ``@handler``. Importing this package needs no Redis, network or environment.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.errors import PermanentError, TransientError
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import (
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentFailed,
    DeploymentReady,
    DeploymentUpdated,
    Envelope,
    Event,
    TranscriptionCompleted,
)
from runinfra_webhooks.service.core.signature import Outcome, Verification
from runinfra_webhooks.service.core.webhook import InvalidEventError, Webhook, WebhookVerificationError, sign

__all__ = [
    "DeploymentCreated",
    "DeploymentDeleted",
    "DeploymentFailed",
    "DeploymentReady",
    "DeploymentUpdated",
    "Envelope",
    "Event",
    "HandlerContext",
    "InvalidEventError",
    "Outcome",
    "PermanentError",
    "TranscriptionCompleted",
    "TransientError",
    "Verification",
    "Webhook",
    "WebhookVerificationError",
    "__version__",
    "handler",
    "sign",
]

try:
    __version__ = version("runinfra-webhooks")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
