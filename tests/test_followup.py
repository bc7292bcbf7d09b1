"""Follow-up audio against real Redis and the gateway emulator over real HTTP."""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from redis.asyncio import Redis

from runinfra_webhooks.handlers import followup
from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.errors import PermanentError
from runinfra_webhooks.service.core.events import TranscriptionCompleted, parse_event
from runinfra_webhooks.service.gateway.client import GatewayClient, GatewayTransientError, idempotency_key
from runinfra_webhooks.service.storage import keys
from tests.builders import example_event
from tests.conftest import make_settings
from tests.stubserver import STUB_API_KEY, StubServer

TRANSCRIPT = "Hi, this is Dana. Can you call me back about the invoice?"
VOICE = {"RUNINFRA_TTS_MODEL": "kokoro", "RUNINFRA_TTS_VOICE": "af_heart"}


class Runner:
    """Runs the handler for an event the way a job would: a fresh context per attempt."""

    def __init__(self, redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer) -> None:
        self.redis, self.redis_url, self.tmp_path, self.stub = redis, redis_url, tmp_path, stub
        self.audio_dir = tmp_path / "artifacts" / "audio"

    async def run(self, event: TranscriptionCompleted, **env: object) -> None:
        settings = make_settings(
            self.redis_url,
            self.tmp_path,
            RUNINFRA_BASE_URL=self.stub.base_url,
            RUNINFRA_API_KEY=STUB_API_KEY,
            RUNINFRA_GATEWAY_MAX_ATTEMPTS=1,
            **env,
        )

        gateway = GatewayClient.from_settings(settings)
        try:
            await followup.handle(event, HandlerContext(event_id=event.id, settings=settings, redis=self.redis,
                                                             gateway=gateway))
        finally:
            await gateway.aclose()

    def calls(self, route: str) -> list[dict[str, Any]]:
        return [c for c in self.stub.calls() if c["route"] == f"/v1{route}"]


@pytest.fixture
def runner(redis: Redis, redis_url: str, tmp_path: Path, stub: StubServer) -> Runner:
    return Runner(redis, redis_url, tmp_path, stub)


def transcription(event_id: str | None = None, **data: Any) -> TranscriptionCompleted:
    base = example_event("transcription.completed")
    if event_id is not None:
        base["id"] = event_id
    base["data"] = {**base["data"], **data}
    event = parse_event(base)
    assert isinstance(event, TranscriptionCompleted)
    return event


def files_under(root: Path) -> list[str]:
    """Every file below ``root``, as sorted relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_valid_wav(path: Path) -> None:
    with wave.open(str(path), "rb") as audio:
        assert audio.getnframes() > 0
        assert audio.getsampwidth() == 2


# --- pure core ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content_type", "extension"),
    [
        ("audio/wav", "wav"),
        ("audio/x-wav", "wav"),
        ("audio/wave", "wav"),
        ("Audio/MPEG", "mp3"),
        ("audio/ogg; codecs=opus", "ogg"),
        ("audio/opus", "opus"),
        ("audio/flac", "flac"),
        ("audio/pcm;rate=24000", "pcm"),
        ("application/octet-stream", "wav"),
        ("", "wav"),
        (None, "wav"),
    ],
)
def test_extension_follows_content_type_with_wav_default(content_type: str | None, extension: str) -> None:
    """The file extension comes from the media type, parameters ignored; unknown or missing is wav."""
    assert followup.extension_for(content_type) == extension


UNSAFE_IDS = ["../../etc/passwd", "a/b", "..", ".", ".hidden", "evt%2F", "evt%25", "x\\y", "~tilde", "a:b*?<>|\"'"]


@pytest.mark.parametrize("event_id", ["evt_01JDV3K9F6", "evt-1.2_x", *UNSAFE_IDS])
def test_safe_filename_is_a_plain_reversible_name(event_id: str) -> None:
    """A name never holds a separator, is never hidden or a dot entry, and decodes back to the event id."""
    name = followup.safe_filename(event_id)
    assert "/" not in name and "\\" not in name
    assert not name.startswith(".")
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-%")
    assert unquote(name) == event_id


def test_safe_filename_keeps_safe_ids_and_separates_lookalikes() -> None:
    """Safe ids stay as they are; ids differing only in encoded characters map to different names."""
    assert followup.safe_filename("evt_01JDV3K9F6") == "evt_01JDV3K9F6"
    names = [followup.safe_filename(i) for i in ["a/b", "a%2Fb", "a%252Fb", "a_b", ".a", "%2Ea"]]
    assert len(set(names)) == len(names)


def test_safe_filename_bounds_long_ids_with_a_hash() -> None:
    """A 255-character id of unsafe characters gives a short, distinct name."""
    first, second = "/" * 254 + "a", "/" * 254 + "b"
    name = followup.safe_filename(first)
    assert len(name) <= 200 and "~" in name
    assert name != followup.safe_filename(second)
    assert name == followup.safe_filename(first)


@pytest.mark.parametrize("template", ["{name}", "{text.upper}", "{text[0]}", "{0}", "{}", "{text", "{text:d}"])
def test_template_with_unknown_or_bad_placeholders_is_invalid(template: str) -> None:
    """Only {text}, {language} and {request_id} may be used; anything else is invalid_template."""
    with pytest.raises(PermanentError) as caught:
        followup.render_template(template, text="t", language=None, request_id="r")
    assert caught.value.code == "invalid_template"


def test_template_fills_text_language_and_request_id() -> None:
    """The template gets the transcript, its language (empty when unknown) and the request id."""
    got = followup.render_template("{request_id}/{language}: {text} {{x}}", text="hi", language=None, request_id="r1")
    assert got == "r1/: hi {x}"


def test_write_atomically_leaves_only_the_final_file(tmp_path: Path) -> None:
    """The file appears complete under its name, replaces an older one, and no temp file stays behind."""
    target = tmp_path / "audio" / "x.wav"
    followup.write_atomically(target, b"first")
    followup.write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["x.wav"]


def test_failed_write_keeps_previous_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the write fails before the rename, readers still see the old file whole and no temp file remains."""
    target = tmp_path / "audio" / "x.wav"
    followup.write_atomically(target, b"old")

    def broken_replace(src: str, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        followup.write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["x.wav"]


# --- the reaction -------------------------------------------------------------------------------------
async def test_template_reply_is_spoken_with_voice_and_written_as_wav(runner: Runner) -> None:
    """Without a chat model the template reply goes to /audio/speech with the voice; a WAV file is written."""
    event = transcription()
    await runner.run(event, **VOICE)

    assert runner.calls("/chat/completions") == []
    (call,) = runner.calls("/audio/speech")
    assert call["body"] == {
        "model": "kokoro",
        "input": f"Thanks for your message. We heard: {TRANSCRIPT}",
        "voice": "af_heart",
    }
    assert call["authorization_ok"]
    assert call["idempotency_key"] == idempotency_key(event.id, "speech", 0, 0)
    assert files_under(runner.tmp_path) == [f"artifacts/audio/{event.id}.wav"]
    assert_valid_wav(runner.audio_dir / f"{event.id}.wav")


async def test_reference_audio_mode_sends_ref_audio_text_and_task_type(runner: Runner) -> None:
    """With a reference voice the speech body carries ref_audio, ref_text and task_type instead of voice."""
    await runner.run(
        transcription(),
        RUNINFRA_TTS_MODEL="qwen3-tts",
        RUNINFRA_TTS_REF_AUDIO="https://example.com/ref.wav",
        RUNINFRA_TTS_REF_TEXT="Hello there.",
        RUNINFRA_FOLLOWUP_TEMPLATE="Re {request_id} ({language}): {text}",
    )
    (call,) = runner.calls("/audio/speech")
    assert call["body"] == {
        "model": "qwen3-tts",
        "input": f"Re req_5b2d (en): {TRANSCRIPT}",
        "ref_audio": "https://example.com/ref.wav",
        "ref_text": "Hello there.",
        "task_type": "Base",
    }


async def test_chat_reply_is_spoken_and_kept_for_retries(runner: Runner, redis: Redis) -> None:
    """With a chat model, the chat answer is stored (with retention TTL) and is what gets spoken."""
    event = transcription()
    await runner.run(event, RUNINFRA_CHAT_MODEL="stub-chat", **VOICE)

    (chat,) = runner.calls("/chat/completions")
    assert chat["body"]["model"] == "stub-chat"
    system, user = chat["body"]["messages"]
    assert system["role"] == "system" and "spoken" in system["content"]
    assert user == {"role": "user", "content": TRANSCRIPT}
    assert chat["idempotency_key"] == idempotency_key(event.id, "chat", 0, 0)
    (speech,) = runner.calls("/audio/speech")
    assert speech["body"]["input"] == f"Stub reply to: {TRANSCRIPT}"
    assert await redis.get(keys.followup_reply(event.id)) == f"Stub reply to: {TRANSCRIPT}".encode()
    assert 604_000 < await redis.ttl(keys.followup_reply(event.id)) <= 604_800


async def test_retry_after_failed_speech_does_not_call_chat_again(runner: Runner) -> None:
    """When speech fails after chat succeeded, the retry speaks the stored reply: one charge per step."""
    event = transcription()
    runner.stub.set_faults(route="/v1/audio/speech", script=[503])
    with pytest.raises(GatewayTransientError):
        await runner.run(event, RUNINFRA_CHAT_MODEL="stub-chat", **VOICE)
    await runner.run(event, RUNINFRA_CHAT_MODEL="stub-chat", **VOICE)

    assert len(runner.calls("/chat/completions")) == 1
    assert runner.stub.charges()["by_route"] == {"/v1/chat/completions": 1, "/v1/audio/speech": 1}
    assert_valid_wav(runner.audio_dir / f"{event.id}.wav")


async def test_rerun_after_success_makes_no_call(runner: Runner) -> None:
    """Once the audio file exists, running the event again calls nothing and charges nothing."""
    event = transcription()
    await runner.run(event, RUNINFRA_CHAT_MODEL="stub-chat", **VOICE)
    before = runner.stub.charges()
    await runner.run(event, RUNINFRA_CHAT_MODEL="stub-chat", **VOICE)
    assert runner.stub.charges() == before
    assert len(runner.stub.calls()) == 2


async def test_existing_audio_of_another_extension_counts_as_done(runner: Runner) -> None:
    """An audio file already written for the event under any known extension means done."""
    event = transcription()
    runner.audio_dir.mkdir(parents=True)
    (runner.audio_dir / f"{event.id}.mp3").write_bytes(b"ID3")
    await runner.run(event, **VOICE)
    assert runner.stub.calls() == []


@pytest.mark.parametrize(
    "env",
    [
        {"RUNINFRA_TTS_VOICE": "af_heart"},
        {"RUNINFRA_TTS_MODEL": "kokoro"},
        {"RUNINFRA_TTS_MODEL": "kokoro", "RUNINFRA_TTS_REF_AUDIO": "ref.wav"},
        {"RUNINFRA_TTS_MODEL": "kokoro", "RUNINFRA_TTS_REF_TEXT": "Hello."},
    ],
    ids=["no-model", "no-voice", "ref-audio-without-text", "ref-text-without-audio"],
)
async def test_missing_tts_configuration_is_permanent_before_any_call(runner: Runner, env: dict[str, str]) -> None:
    """Without a TTS model and a complete voice mode the event fails permanently, and chat is not charged."""
    with pytest.raises(PermanentError) as caught:
        await runner.run(transcription(), RUNINFRA_CHAT_MODEL="stub-chat", **env)
    assert caught.value.code == "tts_not_configured"
    assert runner.stub.calls() == []


async def test_invalid_template_fails_permanently_without_calls(runner: Runner) -> None:
    """A template with an unknown placeholder dead-letters the event at use, before any gateway call."""
    with pytest.raises(PermanentError) as caught:
        await runner.run(transcription(), RUNINFRA_FOLLOWUP_TEMPLATE="Hello {name}", **VOICE)
    assert caught.value.code == "invalid_template"
    assert runner.stub.calls() == []


@pytest.mark.parametrize("event_id", UNSAFE_IDS)
async def test_unsafe_event_id_writes_inside_audio_dir(runner: Runner, tmp_path: Path, event_id: str) -> None:
    """An event id with separators or dots still lands as one file directly in the audio directory."""
    await runner.run(transcription(event_id), **VOICE)
    name = f"{followup.safe_filename(event_id)}.wav"
    assert files_under(tmp_path) == [f"artifacts/audio/{name}"]
    assert_valid_wav(runner.audio_dir / name)
