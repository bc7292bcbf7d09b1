"""Settings, read from the environment once and passed down explicitly.

Nothing reads the environment at import time: the app factory, the worker start-up and the CLI each call
``load_settings(cls)`` for the class their process needs and hand the frozen object to what they build. A
command that only reads stored state builds ``StoreSettings`` and needs no secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runinfra_webhooks.service.core.route_limits import parse_concurrency, parse_rate_limits
from runinfra_webhooks.service.storage.redis_url import parse_redis_url
from runinfra_webhooks.service.storage.vectors.url import parse_store_url

__all__ = [
    "ConfigError",
    "ConsoleSettings",
    "ReceiverSettings",
    "Settings",
    "StoreSettings",
    "WorkerSettings",
    "load_settings",
]

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


class _FromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class StoreSettings(_FromEnvironment):
    """What every process needs: where the state is and how long it is kept. No secret."""

    redis_url: str = Field("redis://localhost:6379/0", alias="REDIS_URL")
    dedup_ttl: int = Field(604_800, alias="RUNINFRA_DEDUP_TTL", gt=0)
    artifacts_dir: Path = Field(Path("./artifacts"), alias="RUNINFRA_ARTIFACTS_DIR")
    event_retention: int = Field(604_800, alias="RUNINFRA_EVENT_RETENTION", gt=0)
    dead_letter_retention: int = Field(2_592_000, alias="RUNINFRA_DEAD_LETTER_RETENTION", gt=0)
    audit_retention: int = Field(2_592_000, alias="RUNINFRA_AUDIT_RETENTION", gt=0)
    lost_deadline: int = Field(86_400, alias="RUNINFRA_LOST_DEADLINE", gt=0)
    log_level: str = Field("info", alias="RUNINFRA_LOG_LEVEL")
    # Which reactions exist: the receiver needs them as much as the worker (which types to queue).
    handler_modules: Annotated[tuple[str, ...], NoDecode] = Field((), alias="RUNINFRA_HANDLERS")
    builtin_reactions: Annotated[tuple[str, ...], NoDecode] = Field(
        ("registry", "embeddings", "followup"), alias="RUNINFRA_BUILTIN_REACTIONS")
    # Where re-embedded vectors live: the worker writes them, `corpus` reads and drops them.
    vector_store: str = Field("redis", alias="RUNINFRA_VECTOR_STORE")
    qdrant_api_key: SecretStr | None = Field(None, alias="RUNINFRA_QDRANT_API_KEY")
    qdrant_lock_wait: float = Field(10.0, alias="RUNINFRA_QDRANT_LOCK_WAIT", ge=0)
    qdrant_timeout: float = Field(30.0, alias="RUNINFRA_QDRANT_TIMEOUT", gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parse_redis_url(value)  # RedisUrlError is a ValueError whose message never contains the URL
        return value

    @field_validator("vector_store")
    @classmethod
    def _vector_store(cls, value: str) -> str:
        parse_store_url(value)  # its ValueError never repeats the value
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            msg = "one of debug, info, warning, error"
            raise ValueError(msg)
        return value.lower()

    @field_validator("handler_modules", "builtin_reactions", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        names = tuple(part.strip() for part in value.split(",") if part.strip())
        if any(_MODULE.fullmatch(n) is None for n in names):
            msg = "a comma-separated list of importable names"
            raise ValueError(msg)
        return names


class _Verifying(StoreSettings):
    """What re-verifies stored deliveries: the webhook secrets and the tolerance (secrets optional here)."""

    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field((), alias="RUNINFRA_WEBHOOK_SECRET")
    tolerance: int = Field(300, alias="RUNINFRA_WEBHOOK_TOLERANCE", ge=0)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        secrets = tuple(part.strip() for part in value.split(","))
        if any(not s for s in secrets):
            msg = "empty entry in the comma-separated list"
            raise ValueError(msg)
        if any(any(ch.isspace() for ch in s) for s in secrets):
            msg = "whitespace inside a secret"
            raise ValueError(msg)
        return secrets

    def secret_values(self) -> tuple[bytes, ...]:
        """The secrets as HMAC keys: the UTF-8 bytes of each whole string, prefix included."""
        return tuple(s.get_secret_value().encode() for s in self.webhook_secrets)


class ReceiverSettings(_Verifying):
    """The receiver's: the webhook secrets (required) and the limits on what it accepts."""

    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(alias="RUNINFRA_WEBHOOK_SECRET")
    max_body: int = Field(1_048_576, alias="RUNINFRA_WEBHOOK_MAX_BODY", gt=0)
    body_timeout: float = Field(10.0, alias="RUNINFRA_BODY_TIMEOUT", gt=0)
    # Hostile input at the receiver's edge (enforced by `serve`'s HTTP protocol) and readiness.
    max_header_bytes: int = Field(16_384, alias="RUNINFRA_MAX_HEADER_BYTES", ge=1024)
    header_timeout: float = Field(10.0, alias="RUNINFRA_HEADER_TIMEOUT", gt=0)
    max_connections: int = Field(4096, alias="RUNINFRA_MAX_CONNECTIONS", gt=0)
    ready_probe_timeout: float = Field(1.0, alias="RUNINFRA_READY_PROBE_TIMEOUT", gt=0)


class WorkerSettings(StoreSettings):
    """The worker's: the gateway, the reactions' configuration, attempts and timeouts. No webhook secret."""

    base_url: str = Field("https://api.runinfra.ai/v1", alias="RUNINFRA_BASE_URL")
    api_key: SecretStr | None = Field(None, alias="RUNINFRA_API_KEY")
    tts_model: str | None = Field(None, alias="RUNINFRA_TTS_MODEL")
    tts_voice: str | None = Field(None, alias="RUNINFRA_TTS_VOICE")
    tts_ref_audio: str | None = Field(None, alias="RUNINFRA_TTS_REF_AUDIO")
    tts_ref_text: str | None = Field(None, alias="RUNINFRA_TTS_REF_TEXT")
    tts_task_type: str = Field("Base", alias="RUNINFRA_TTS_TASK_TYPE")
    chat_model: str | None = Field(None, alias="RUNINFRA_CHAT_MODEL")
    followup_template: str = Field(
        "Thanks for your message. We heard: {text}", alias="RUNINFRA_FOLLOWUP_TEMPLATE"
    )
    embed_batch_size: int = Field(64, alias="RUNINFRA_EMBED_BATCH_SIZE", gt=0, le=2048)
    embed_concurrency: int = Field(4, alias="RUNINFRA_EMBED_CONCURRENCY", gt=0, le=64)  # batches in flight
    max_attempts: int = Field(8, alias="RUNINFRA_MAX_ATTEMPTS", gt=0, le=100)
    gateway_max_attempts: int = Field(4, alias="RUNINFRA_GATEWAY_MAX_ATTEMPTS", gt=0, le=20)
    gateway_timeout: float = Field(20.0, alias="RUNINFRA_GATEWAY_TIMEOUT", gt=0)
    gateway_max_connections: int = Field(64, alias="RUNINFRA_GATEWAY_MAX_CONNECTIONS", gt=0)
    retry_base: float = Field(0.5, alias="RUNINFRA_RETRY_BASE", gt=0)
    retry_cap: float = Field(60.0, alias="RUNINFRA_RETRY_CAP", gt=0)
    job_timeout: float = Field(30.0, alias="RUNINFRA_JOB_TIMEOUT", gt=0)
    worker_concurrency: int = Field(50, alias="RUNINFRA_WORKER_CONCURRENCY", gt=0)
    worker_poll_delay: float = Field(0.05, alias="RUNINFRA_WORKER_POLL_DELAY", gt=0)
    shutdown_grace: int = Field(20, alias="RUNINFRA_SHUTDOWN_GRACE", ge=0)
    sweep_interval: int = Field(30, alias="RUNINFRA_SWEEP_INTERVAL", gt=0)
    stuck_after: int = Field(120, alias="RUNINFRA_STUCK_AFTER", gt=0)

    # --- flow control toward the gateway, pause, alerts --------------------------------------------------------
    gateway_rate_limit: str = Field("", alias="RUNINFRA_GATEWAY_RATE_LIMIT")
    gateway_concurrency: str = Field("", alias="RUNINFRA_GATEWAY_CONCURRENCY")
    breaker_threshold: int = Field(5, alias="RUNINFRA_BREAKER_THRESHOLD", gt=0, le=1000)
    breaker_cooldown: float = Field(30.0, alias="RUNINFRA_BREAKER_COOLDOWN", gt=0, le=86_400)
    alert_url: str | None = Field(None, alias="RUNINFRA_ALERT_URL")
    alert_secret: SecretStr | None = Field(None, alias="RUNINFRA_ALERT_SECRET")
    alert_cooldown: float = Field(300.0, alias="RUNINFRA_ALERT_COOLDOWN", ge=0)
    alert_backlog_age: float = Field(300.0, alias="RUNINFRA_ALERT_BACKLOG_AGE", gt=0)
    alert_retry_cap: float = Field(60.0, alias="RUNINFRA_ALERT_RETRY_CAP", gt=0)

    # --- one re-embedding build shared by several workers ------------------------------------------------------
    # Jobs that work on one build at once: the event's own and build_parts - 1 helpers (one per other worker).
    build_parts: int = Field(1, alias="RUNINFRA_BUILD_PARTS", ge=1, le=64)
    # How long a helper that finds its own worker already on the build waits before another worker may take it.
    build_part_defer: float = Field(0.2, alias="RUNINFRA_BUILD_PART_DEFER", gt=0, le=60)

    @field_validator("gateway_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @field_validator("gateway_concurrency")
    @classmethod
    def _concurrency(cls, value: str) -> str:
        parse_concurrency(value)
        return value

    @field_validator("alert_url")
    @classmethod
    def _alert_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            msg = "an http:// or https:// URL"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _alerts_complete(self) -> WorkerSettings:
        if self.alert_url is not None and (self.alert_secret is None or not self.alert_secret.get_secret_value()):
            msg = "RUNINFRA_ALERT_SECRET: required setting is not set (RUNINFRA_ALERT_URL is)"
            raise ValueError(msg)  # load_settings prints a cross-field message as it is
        return self


class ConsoleSettings(_Verifying):
    """The console's: its access token (required by `console` only; it exits 2 without it), and the webhook
    secrets when set, with which its audit verification re-checks every stored signature and entry MAC."""

    console_token: SecretStr | None = Field(None, alias="RUNINFRA_CONSOLE_TOKEN")
    console_session_ttl: int = Field(43_200, alias="RUNINFRA_CONSOLE_SESSION_TTL", gt=0)

    @field_validator("console_token")
    @classmethod
    def _console_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            msg = "at least 32 characters"  # never the length or any part of the value
            raise ValueError(msg)
        return value


class Settings(ReceiverSettings, ConsoleSettings, WorkerSettings):
    """Everything at once, for what runs both sides in one process (tests, benchmarks)."""


@overload
def load_settings(**overrides: Any) -> Settings: ...


@overload
def load_settings(cls: type[S], /, **overrides: Any) -> S: ...


def load_settings(cls: type[BaseSettings] = Settings, /, **overrides: Any) -> BaseSettings:
    """Build ``cls`` (all settings by default) from the environment and explicit overrides, by variable name.

    Raises ``ConfigError`` with one line naming the first bad variable; never echoes its value, which may
    be a secret.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        kind = "missing" if err["type"] == "missing" else "invalid"
        reason = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and reason.startswith("RUNINFRA_"):
            raise ConfigError(reason) from None  # a check across settings names its variable itself
        msg = f"{name}: {kind} setting ({reason})" if kind == "invalid" else f"{name}: required setting is not set"
        raise ConfigError(msg) from None
