"""What the fault tests share: senders that behave like RunInfra, bulk reads of event state, the charge
check, and the one line each test prints (and appends to ``$RWH_FAULT_REPORT`` as JSON) with its figure.

Sizes: ``RWH_FAULT_SCALE`` (default 1, the CI size) multiplies the number of events of every test; the
documented full soak is ``RWH_FAULT_SCALE=10``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runinfra_webhooks.service.storage import keys
from tests.builders import WEBHOOK_PATH, example_event, signed_delivery
from tests.processes import Proc, wait_until
from tests.redis_server import Db
from tests.stubserver import StubServer

FINAL = ("succeeded", "dead_lettered", "ignored")
IN_FLIGHT = ("queued", "processing", "retrying")
SCALE = float(os.environ.get("RWH_FAULT_SCALE", "1"))


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- events -------------------------------------------------------------------------------------------
def transcription(i: int, tag: str) -> dict[str, Any]:
    """A gateway-bound event (one /audio/speech call, plus one /chat/completions with a chat model)."""
    event = example_event("transcription.completed")
    event["data"]["text"] = f"{tag} message number {i}: please call me back about invoice {i}."
    return event


def deployment(i: int) -> dict[str, Any]:
    """A registry-only event (no gateway call): created/failed/deleted of its own deployment."""
    kind = ("deployment.created", "deployment.failed", "deployment.deleted")[i % 3]
    event = example_event(kind)
    event["data"]["deployment_id"] = f"dep_fault_{i}"
    return event


# --- sending ------------------------------------------------------------------------------------------
def post_concurrently(url: str, bodies: list[tuple[bytes, dict[str, str]]], *, timeout: float = 120,
                      max_connections: int = 1000) -> list[Any]:
    """POST every (body, headers) at once, one connection each (at most ``max_connections`` open at a time);
    the JSON answers, in order.

    Plain HTTP/1.1 over asyncio streams: an HTTP client's connection pool would queue the requests itself
    (and gets slow with thousands waiting), which is not the storm we mean. A status other than 2xx is
    returned as ``{"status": "http_<code>"}``, a transport error as ``{"status": "error_<name>"}``: the
    caller counts, so nothing raises here.
    """
    target = httpx.URL(url)
    host, port = target.host, target.port or 80

    async def run() -> list[Any]:
        gate = asyncio.Semaphore(max_connections)
        start = asyncio.Event()

        async def one(body: bytes, headers: dict[str, str]) -> Any:
            async with gate:
                await start.wait()
                lines = [f"POST {WEBHOOK_PATH} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}",
                         "connection: close", *(f"{k}: {v}" for k, v in headers.items())]
                try:
                    async with asyncio.timeout(timeout):
                        reader, writer = await asyncio.open_connection(host, port)
                        try:
                            writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
                            await writer.drain()
                            raw = await reader.read()
                        finally:
                            writer.close()
                            with contextlib.suppress(OSError):
                                await writer.wait_closed()
                except (OSError, TimeoutError) as exc:
                    return {"status": f"error_{type(exc).__name__}"}
            head, _, payload = raw.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            return json.loads(payload) if 200 <= status < 300 else {"status": f"http_{status}"}

        tasks = [asyncio.create_task(one(b, h)) for b, h in bodies]
        await asyncio.sleep(0.1)  # every task that can is now waiting at the start line
        start.set()
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def deliver_until_acked(client: httpx.Client, url: str, event: dict[str, Any], *, deadline: float,
                        on_answer: Callable[[str], None] | None = None) -> str:
    """Deliver like RunInfra: re-signed and retried on anything but 2xx until acknowledged; the outcome.
    ``on_answer`` sees every answer: the outcome of a 2xx, the status code otherwise, or ``error_<name>``."""
    while True:
        body, headers = signed_delivery(event)
        try:
            r = client.post(url + WEBHOOK_PATH, content=body, headers=headers)
        except httpx.HTTPError as exc:
            label = f"error_{type(exc).__name__}"
        else:
            if r.is_success:
                outcome: str = r.json()["status"]
                if on_answer is not None:
                    on_answer(outcome)
                return outcome
            label = str(r.status_code)
        if on_answer is not None:
            on_answer(label)
        if time.monotonic() > deadline:
            raise AssertionError(f"{event['id']} was never acknowledged (last answer {label})")
        time.sleep(0.1)


def deliver_all(url: str, events: list[dict[str, Any]], *, threads: int = 8,
                timeout: float = 120 * max(1.0, SCALE)) -> dict[str, str]:
    """Deliver every event (retrying until 2xx) from a few threads; event id -> outcome."""
    out: dict[str, str] = {}
    todo = list(events)
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def work() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    event = todo.pop(0)
                outcome = deliver_until_acked(client, url, event, deadline=deadline)
                with lock:
                    out[event["id"]] = outcome

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout + 10)
    assert len(out) == len(events), f"only {len(out)} of {len(events)} deliveries were acknowledged"
    return out


@dataclass
class SteadySender:
    """A steady load from ``threads`` threads, each sending about ``rate`` deliveries a second, RunInfra-style
    (retried on anything but 2xx). Counts every answer."""

    url: str
    events: list[dict[str, Any]]
    threads: int = 4
    rate: float = 10.0
    timeout: float = 180.0 * max(1.0, SCALE)
    acked: dict[str, str] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._todo = list(self.events)
        self._lock = threading.Lock()
        self._pool = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def start(self) -> SteadySender:
        for t in self._pool:
            t.start()
        return self

    def join(self) -> None:
        for t in self._pool:
            t.join(self.timeout + 10)
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            with httpx.Client(timeout=30) as client:
                while True:
                    with self._lock:
                        if not self._todo:
                            return
                        event = self._todo.pop(0)
                    outcome = deliver_until_acked(client, self.url, event, deadline=deadline,
                                                  on_answer=self._seen)
                    with self._lock:
                        self.acked[event["id"]] = outcome
                    time.sleep(1 / self.rate)
        except BaseException as exc:  # surfaced by join()
            self.errors.append(exc)

    def _seen(self, answer: str) -> None:
        with self._lock:
            self.answers[answer] += 1

    def acked_ids(self) -> list[str]:
        with self._lock:
            return list(self.acked)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def unavailable(self) -> int:
        with self._lock:
            return self.answers["503"]


# --- reading state ------------------------------------------------------------------------------------
def records(db: Db, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """event id -> its record (without the body), read in one pipeline."""
    ids = list(ids)
    names = ["state", "attempts", "generation", "received_ms", "updated_ms", "reason", "last_error"]
    pipe = db.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(keys.event(i), names)
    out = {}
    for i, values in zip(ids, pipe.execute(), strict=True):
        out[i] = {n: (v.decode() if v is not None else "") for n, v in zip(names, values, strict=True)}
    return out


def states(db: Db, ids: Iterable[str]) -> Counter[str]:
    return Counter(r["state"] or "missing" for r in records(db, ids).values())


def wait_final(db: Db, ids: list[str], *, timeout: float, what: str,
               procs: Iterable[Proc] = ()) -> dict[str, dict[str, str]]:
    """Poll until every event is final (succeeded / dead-lettered / ignored); fail with a summary and the
    tail of the workers' logs past the timeout. The timeout grows with RWH_FAULT_SCALE."""
    timeout *= max(1.0, SCALE)
    try:
        wait_until(lambda: all(r["state"] in FINAL for r in records(db, ids).values()), timeout=timeout,
                   what=what, interval=0.25)
    except AssertionError as exc:
        tails = "\n".join(f"--- {p.log.name}\n{p.output()[-2000:]}" for p in procs)
        raise AssertionError(f"{exc}; states now {dict(states(db, ids))}\n{tails}") from None
    return records(db, ids)


def in_flight_ids(db: Db, ids: list[str]) -> set[str]:
    """Events being worked on right now: state processing, or an arq in-progress key for their job."""
    busy = {i for i, r in records(db, ids).items() if r["state"] == "processing"}
    for key in db.scan_iter(match=keys.ARQ_IN_PROGRESS + "*", count=1000):
        busy.add(key.decode().removeprefix(keys.ARQ_IN_PROGRESS).rsplit("@", 1)[0])
    return busy & set(ids)


# --- charges ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Charges:
    total: int
    keys: int
    double_charged: int  # charges beyond the first for any key, plus charges without a key
    by_route: dict[str, int]


def charges(stub: StubServer) -> Charges:
    c = stub.charges()
    by_key: dict[str, int] = c["by_key"]
    extra = sum(n - 1 for n in by_key.values() if n > 1) + (c["total"] - sum(by_key.values()))
    return Charges(total=c["total"], keys=len(by_key), double_charged=extra, by_route=c["by_route"])


def settled_charges(stub: StubServer, *, expected: int, timeout: float = 10) -> Charges:
    """The charges once the stub's in-flight work has finished (a killed client's call still completes)."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: charges(stub).total >= expected, timeout=timeout, what="charges", interval=0.1)
    time.sleep(0.5)  # anything still in flight would show up now as an extra charge
    return charges(stub)


# --- timing at the gateway --------------------------------------------------------------------------
def most_in_window(times: Iterable[float], window: float) -> int:
    """The most of ``times`` (seconds) inside any half-open interval ``[t, t + window)``."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- the figure ---------------------------------------------------------------------------------------
def report(test: str, **figure: Any) -> None:
    """Print the figure as one line (``pytest -s`` shows it) and append it to ``$RWH_FAULT_REPORT``."""
    figure = {"test": test, "scale": SCALE, **figure}
    print(f"\nFAULT FIGURE {json.dumps(figure)}")
    target = os.environ.get("RWH_FAULT_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(json.dumps(figure) + "\n")


@contextlib.contextmanager
def workers(env: dict[str, str], directory: Path, n: int = 1, name: str = "worker") -> Iterator[list[Proc]]:
    """``n`` worker processes, terminated at the end (SIGTERM, then SIGKILL)."""
    procs = [Proc(["worker"], env, directory / f"{name}{i}.log") for i in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()


def shuffled(items: list[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
