"""Settings, read from the environment once and passed down explicitly.

Nothing reads the environment at import time: the app factory, the worker start-up and the CLI each call
``load_settings()`` and hand the frozen object to what they build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from runinfra_webhooks.service.storage.redis_url import parse_redis_url
from runinfra_webhooks.service.storage.vectors.url import parse_store_url

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # --- contract §8 ---------------------------------------------------------------------------
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(alias="RUNINFRA_WEBHOOK_SECRET")
    tolerance: int = Field(300, alias="RUNINFRA_WEBHOOK_TOLERANCE", ge=0)
    max_body: int = Field(1_048_576, alias="RUNINFRA_WEBHOOK_MAX_BODY", gt=0)
    dedup_ttl: int = Field(604_800, alias="RUNINFRA_DEDUP_TTL", gt=0)
    redis_url: str = Field("redis://localhost:6379/0", alias="REDIS_URL")
    base_url: str = Field("https://api.runinfra.ai/v1", alias="RUNINFRA_BASE_URL")
    api_key: SecretStr | None = Field(None, alias="RUNINFRA_API_KEY")
    tts_model: str | None = Field(None, alias="RUNINFRA_TTS_MODEL")
    tts_voice: str | None = Field(None, alias="RUNINFRA_TTS_VOICE")
    tts_ref_audio: str | None = Field(None, alias="RUNINFRA_TTS_REF_AUDIO")
    tts_ref_text: str | None = Field(None, alias="RUNINFRA_TTS_REF_TEXT")
    tts_task_type: str = Field("Base", alias="RUNINFRA_TTS_TASK_TYPE")
    artifacts_dir: Path = Field(Path("./artifacts"), alias="RUNINFRA_ARTIFACTS_DIR")

    # --- the project's own (documented in the README) -------------------------------------------
    body_timeout: float = Field(10.0, alias="RUNINFRA_BODY_TIMEOUT", gt=0)
    event_retention: int = Field(604_800, alias="RUNINFRA_EVENT_RETENTION", gt=0)
    dead_letter_retention: int = Field(2_592_000, alias="RUNINFRA_DEAD_LETTER_RETENTION", gt=0)
    audit_retention: int = Field(2_592_000, alias="RUNINFRA_AUDIT_RETENTION", gt=0)
    chat_model: str | None = Field(None, alias="RUNINFRA_CHAT_MODEL")
    followup_template: str = Field(
        "Thanks for your message. We heard: {text}", alias="RUNINFRA_FOLLOWUP_TEMPLATE"
    )
    embed_batch_size: int = Field(64, alias="RUNINFRA_EMBED_BATCH_SIZE", gt=0, le=2048)
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
    lost_deadline: int = Field(86_400, alias="RUNINFRA_LOST_DEADLINE", gt=0)
    log_level: str = Field("info", alias="RUNINFRA_LOG_LEVEL")

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

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parse_redis_url(value)  # RedisUrlError is a ValueError whose message never contains the URL
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            msg = "one of debug, info, warning, error"
            raise ValueError(msg)
        return value.lower()

    def secret_values(self) -> tuple[bytes, ...]:
        """The secrets as HMAC keys: the UTF-8 bytes of each whole string, prefix included."""
        return tuple(s.get_secret_value().encode() for s in self.webhook_secrets)

    # --- the vector store of re-embedding ------------------------------------------------------
    vector_store: str = Field("redis", alias="RUNINFRA_VECTOR_STORE")
    qdrant_api_key: SecretStr | None = Field(None, alias="RUNINFRA_QDRANT_API_KEY")
    qdrant_lock_wait: float = Field(10.0, alias="RUNINFRA_QDRANT_LOCK_WAIT", ge=0)
    qdrant_timeout: float = Field(30.0, alias="RUNINFRA_QDRANT_TIMEOUT", gt=0)
    embed_concurrency: int = Field(4, alias="RUNINFRA_EMBED_CONCURRENCY", gt=0, le=64)

    @field_validator("vector_store")
    @classmethod
    def _vector_store(cls, value: str) -> str:
        parse_store_url(value)  # its ValueError never repeats the value
        return value.strip()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and explicit overrides, by variable name).

    Raises ``ConfigError`` with one line naming the first bad variable; never echoes its value, which may
    be a secret.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        kind = "missing" if err["type"] == "missing" else "invalid"
        reason = err["msg"].removeprefix("Value error, ")
        msg = f"{name}: {kind} setting ({reason})" if kind == "invalid" else f"{name}: required setting is not set"
        raise ConfigError(msg) from None
