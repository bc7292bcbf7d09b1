"""The README's FastAPI example, copied out of the README and served by a real uvicorn."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runinfra_webhooks import sign
from tests.builders import SECRET, example_event
from tests.redis_server import free_port

README = Path(__file__).parents[1] / "README.md"


def _readme_example(name: str) -> str:
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", README.read_text("utf-8"), re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


@pytest.fixture
def example_url(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "readme_example.py").write_text(_readme_example("fastapi"), "utf-8")
    port = free_port()
    env = {**os.environ, "RUNINFRA_WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(tmp_path)}
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "readme_example:app", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/webhooks/runinfra"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_readme_fastapi_example_accepts_a_signed_event_and_refuses_the_rest(example_url: str) -> None:
    """Signed: 202 with the typed event's id; bad signature: 401 signature_mismatch; not JSON: 400."""
    body = json.dumps(example_event("transcription.completed")).encode()
    ok = httpx.post(example_url, content=body, headers={"runinfra-signature": sign(body, SECRET)})
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"status": "received", "event_id": json.loads(body)["id"], "type": "transcription.completed"}

    forged = httpx.post(example_url, content=body, headers={"runinfra-signature": sign(body, "whsec_other")})
    assert (forged.status_code, forged.json()["detail"]) == (401, "signature_mismatch")

    junk = b"not json"
    bad = httpx.post(example_url, content=junk, headers={"runinfra-signature": sign(junk, SECRET)})
    assert (bad.status_code, bad.json()["detail"]) == (400, "invalid_json")
