"""Follow-up audio: a completed transcription gets a spoken reply.

Steps, each idempotent:

1. Done already? The file ``<artifacts_dir>/audio/<safe name>.<ext>`` exists for one of the known
   extensions: nothing to do (no gateway call, no charge). The file system is the record.
2. Configuration is checked before anything is charged: ``RUNINFRA_TTS_MODEL`` and a voice mode
   (``RUNINFRA_TTS_VOICE``, which wins when both are set, or ``RUNINFRA_TTS_REF_AUDIO`` +
   ``RUNINFRA_TTS_REF_TEXT`` with ``RUNINFRA_TTS_TASK_TYPE``); otherwise ``PermanentError("tts_not_configured")``.
3. Reply text: with ``RUNINFRA_CHAT_MODEL``, ``POST /chat/completions`` (step ``chat``) and the reply is kept
   in Redis (``keys.followup_reply``, EX = event retention) so a retry does not call chat again; without it,
   ``RUNINFRA_FOLLOWUP_TEMPLATE`` formatted with ``{text}``, ``{language}`` and ``{request_id}`` (any other
   field, attribute or index access is ``PermanentError("invalid_template")``).
4. ``POST /audio/speech`` (step ``speech``); the bytes are written atomically (temp file in the same
   directory, fsync, ``os.replace``, fsync of the directory), the extension taken from the content type.

Safe file names: an event id may be any printable ASCII without whitespace (``/``, ``..``, ``%``...).
``safe_filename`` keeps ``[A-Za-z0-9_.-]`` and percent-encodes every other byte as ``%XX`` (``%`` itself too);
a leading ``.`` is encoded as ``%2E`` so no name is hidden, ``.`` or ``..``. The result never contains a
path separator, and the mapping is injective (it decodes back with ``urllib.parse.unquote``). A name longer
than 200 characters is cut to 150 and suffixed with ``~`` + 32 hex of the id's SHA-256 (``~`` never appears
in an encoded name, so long names cannot collide with short ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.errors import PermanentError
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import TranscriptionCompleted
from runinfra_webhooks.service.settings import WorkerSettings
from runinfra_webhooks.service.storage import keys

__all__ = [
    "AUDIO_EXTENSIONS",
    "audio_path",
    "existing_audio",
    "extension_for",
    "handle",
    "render_template",
    "safe_filename",
    "speech_body",
    "write_atomically",
]

log = structlog.get_logger(__name__)

SYSTEM_PROMPT = (
    "You write a brief follow-up reply to the user's message that will be spoken aloud: one to three short, "
    "friendly sentences in the language of the message, plain text without markup."
)
DEFAULT_EXTENSION = "wav"
AUDIO_EXTENSIONS: Mapping[str, str] = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/pcm": "pcm",
    "audio/aac": "aac",
}
_KNOWN_EXTENSIONS = tuple(dict.fromkeys(AUDIO_EXTENSIONS.values()))
_TEMPLATE_FIELDS = frozenset({"text", "language", "request_id"})
_SAFE = frozenset(string.ascii_letters + string.digits + "_.-")
_MAX_NAME = 200
_CUT_NAME = 150


# --- pure core -------------------------------------------------------------------------------------
def extension_for(content_type: str | None) -> str:
    """File extension for a response content type (parameters ignored); ``wav`` when unknown or missing."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return AUDIO_EXTENSIONS.get(media_type, DEFAULT_EXTENSION)


def safe_filename(event_id: str) -> str:
    """A file name (without extension) for ``event_id``: deterministic, injective, never a path."""
    encoded = "".join(
        ch if ch in _SAFE and not (i == 0 and ch == ".") else "".join(f"%{b:02X}" for b in ch.encode())
        for i, ch in enumerate(event_id)
    )
    if len(encoded) > _MAX_NAME:
        encoded = f"{encoded[:_CUT_NAME]}~{hashlib.sha256(event_id.encode()).hexdigest()[:32]}"
    return encoded


def audio_path(artifacts_dir: Path, event_id: str, extension: str) -> Path:
    return artifacts_dir / "audio" / f"{safe_filename(event_id)}.{extension}"


def render_template(template: str, *, text: str, language: str | None, request_id: str) -> str:
    """Format the follow-up template; only the plain fields text, language and request_id are allowed."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise PermanentError("invalid_template", f"RUNINFRA_FOLLOWUP_TEMPLATE: {exc}") from None
    unknown = sorted({f for f in fields if f not in _TEMPLATE_FIELDS})
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in sorted(_TEMPLATE_FIELDS))
        detail = f"RUNINFRA_FOLLOWUP_TEMPLATE uses {unknown}; allowed: {allowed}"
        raise PermanentError("invalid_template", detail)
    try:
        return template.format(text=text, language=language or "", request_id=request_id)
    except (ValueError, KeyError, IndexError) as exc:  # e.g. a bad format spec such as {text:d}
        raise PermanentError("invalid_template", f"RUNINFRA_FOLLOWUP_TEMPLATE: {exc}") from None


def speech_body(settings: WorkerSettings, text: str) -> dict[str, Any]:
    """The ``/audio/speech`` request for ``text``; ``PermanentError("tts_not_configured")`` without config."""
    if not settings.tts_model:
        raise PermanentError("tts_not_configured", "RUNINFRA_TTS_MODEL is not set")
    if settings.tts_voice:
        return {"model": settings.tts_model, "input": text, "voice": settings.tts_voice}
    if settings.tts_ref_audio and settings.tts_ref_text:
        return {
            "model": settings.tts_model,
            "input": text,
            "ref_audio": settings.tts_ref_audio,
            "ref_text": settings.tts_ref_text,
            "task_type": settings.tts_task_type,
        }
    detail = "set RUNINFRA_TTS_VOICE, or RUNINFRA_TTS_REF_AUDIO together with RUNINFRA_TTS_REF_TEXT"
    raise PermanentError("tts_not_configured", detail)


def chat_reply(payload: Any) -> str:
    """``choices[0].message.content`` of a chat completion, stripped; PermanentError if absent or empty."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise PermanentError("invalid_gateway_response", "/chat/completions: no choices[0].message.content text")
    return content.strip()


# --- files -----------------------------------------------------------------------------------------
def existing_audio(artifacts_dir: Path, event_id: str) -> Path | None:
    """The audio file already written for ``event_id``, if any."""
    for extension in _KNOWN_EXTENSIONS:
        path = audio_path(artifacts_dir, event_id, extension)
        if path.is_file():
            return path
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either no file or the whole file, also after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- the reaction ----------------------------------------------------------------------------------
@handler("transcription.completed")
async def handle(event: TranscriptionCompleted, ctx: HandlerContext) -> None:
    settings = ctx.require_settings()
    # A few stat() calls: far cheaper on the event loop than a hop to a thread and back (the write, with
    # its fsyncs, does go to a thread).
    done = existing_audio(settings.artifacts_dir, event.id)
    if done is not None:
        log.info("followup.already_done", event_id=event.id, path=str(done))
        return
    speech_body(settings, "-")  # fail on missing configuration before anything is charged
    reply = await _reply_text(event, ctx)
    response = await ctx.call_gateway("/audio/speech", speech_body(settings, reply), step="speech")
    if not response.content:
        raise PermanentError("invalid_gateway_response", "/audio/speech: empty body")
    path = audio_path(settings.artifacts_dir, event.id, extension_for(response.content_type))
    await asyncio.to_thread(write_atomically, path, response.content)
    log.info(
        "followup.audio_written",
        event_id=event.id,
        path=str(path),
        bytes=len(response.content),
        request_id=response.request_id,
    )


async def _reply_text(event: TranscriptionCompleted, ctx: HandlerContext) -> str:
    data, settings = event.data, ctx.require_settings()
    if not settings.chat_model:
        reply = render_template(
            settings.followup_template, text=data.text, language=data.language, request_id=data.request_id
        )
        if not reply.strip():
            raise PermanentError("empty_reply", "RUNINFRA_FOLLOWUP_TEMPLATE gave an empty reply for this event")
        return reply
    key = keys.followup_reply(event.id)
    stored = await ctx.require_redis().get(key)
    if stored is not None:
        return bytes(stored).decode()
    body = {
        "model": settings.chat_model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": data.text}],
    }
    response = await ctx.call_gateway("/chat/completions", body, step="chat")
    reply = chat_reply(response.json())
    await ctx.require_redis().set(key, reply, ex=settings.event_retention)
    return reply
