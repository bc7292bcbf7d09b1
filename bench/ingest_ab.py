"""A/B of the ingest script and its arguments: this tree against an older commit's, in one run.

    .venv/bin/python -m bench.ingest_ab --base 7038228 [--n 5000] [--repeats 6]

Starts its own redis-server (no persistence, pinned like the main bench's load: core 1). Each repeat ingests
N unique deliveries (the six example events, small bodies) through (A) the base commit's ``ingest.lua``
with its 17 arguments and its digest, and (B) this tree's ``Ingestor`` (script, digest, delivery id, the two
MACs), alternating A B, B A, ...; Redis is flushed between runs. Per delivery it reports Redis's own
``usec_per_call`` of EVALSHA, the receiver-side time to build the arguments, and Redis bytes per delivery;
medians, and the median of the per-repeat B/A ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis as sync_redis
from redis.asyncio import Redis

from bench.run import EXAMPLES, GIT, REDIS_SERVER, TASKSET, Commands, free_port
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.storage import arq_job, keys
from runinfra_webhooks.service.storage.ingest import _SCRIPT, Delivery, Ingestor, IngestOutcome

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"whsec_bench_0123456789abcdef"


def _old_digest(event_id: str, received_ms: int, request_id: str, secret_index: int, header: bytes,
                body: bytes) -> str:
    h = hashlib.sha256()
    for part in (event_id.encode(), str(received_ms).encode(), request_id.encode(), str(secret_index).encode(),
                 header, body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _deliveries(n: int, tag: str) -> list[Delivery]:
    types = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    now_ms = time.time_ns() // 1_000_000
    out = []
    for i in range(n):
        event = json.loads((EXAMPLES / f"{types[i % len(types)]}.json").read_text())
        event["id"] = f"evt_{tag}_{i:07d}"
        body = json.dumps(event, separators=(",", ":")).encode()
        header = sign(body, SECRET.decode(), now_ms // 1000).encode()
        out.append(Delivery(wanted=IngestOutcome.QUEUED, event_id=event["id"], type=event["type"],
                            created=int(event["created"]), header=header, body=body, request_id=f"r{i:031d}",
                            secret_index=0, received_ms=now_ms + i))
    return out


def _old_args(d: Delivery) -> tuple[Any, ...]:
    job_id = keys.job_id(d.event_id, 0)
    digest = _old_digest(d.event_id, d.received_ms, d.request_id, d.secret_index, d.header, d.body)
    return (keys.dedup(d.event_id), keys.event(d.event_id), keys.ARQ_JOB + job_id, keys.ARQ_QUEUE, keys.INFLIGHT,
            keys.DEAD_LETTERS, keys.AUDIT_STREAM, keys.AUDIT_HEAD, d.wanted.value, d.event_id, 604_800,
            d.received_ms, job_id, arq_job.payload(d.event_id, 0, d.received_ms), 86_400_000, 604_800, 2_592_000,
            d.type, d.created, d.request_id, d.secret_index, d.header, d.body, digest, d.reason)


def _run(db: Commands, script: str, numkeys: int, argsets: list[tuple[Any, ...]]) -> dict[str, float]:
    db.flushall()
    db.config_resetstat()
    sha = db.script_load(script)
    base = int(db.info("memory")["used_memory"])
    pipe = db.pipeline(transaction=False)
    for i, args in enumerate(argsets, start=1):
        pipe.evalsha(sha, numkeys, *args)
        if i % 100 == 0:
            pipe.execute()
    pipe.execute()
    stats = db.info("commandstats")["cmdstat_evalsha"]
    grown = int(db.info("memory")["used_memory"]) - base
    return {"evalsha_us": float(stats["usec_per_call"]), "bytes_per_delivery": grown / len(argsets)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ingest_ab")
    p.add_argument("--base", required=True, help="commit whose service/storage/ingest.lua is A")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=6)
    a = p.parse_args()
    old_script = subprocess.run([GIT, "-C", str(ROOT), "show", f"{a.base}:service/storage/ingest.lua"],
                                capture_output=True, text=True, check=True).stdout
    ingestor = Ingestor(Redis(), dedup_ttl=604_800, event_retention=604_800, dead_letter_retention=2_592_000,
                        job_expiry_s=86_400, secrets=(SECRET,))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([TASKSET, "-c", "1", REDIS_SERVER, "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            db = cast(Commands, sync_redis.Redis(port=port))
            for _ in range(100):
                with contextlib.suppress(sync_redis.ConnectionError):
                    if db.ping():
                        break
                time.sleep(0.05)
            runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for r in range(a.repeats):
                for kind in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    ds = _deliveries(a.n, f"{kind}{r}")
                    build = _old_args if kind == "A" else ingestor._args
                    started = time.perf_counter()
                    argsets = [build(d) for d in ds]
                    args_us = (time.perf_counter() - started) / a.n * 1e6
                    res = _run(db, old_script if kind == "A" else _SCRIPT, 8 if kind == "A" else 9, argsets)
                    res["args_us"] = args_us
                    runs[kind].append(res)
                    print(f"{kind}{r}: EVALSHA {res['evalsha_us']:.1f} us, args {args_us:.1f} us, "
                          f"{res['bytes_per_delivery']:.0f} B per delivery", flush=True)
        finally:
            server.terminate()
            server.wait()
    for name in ("evalsha_us", "args_us", "bytes_per_delivery"):
        ma = statistics.median(x[name] for x in runs["A"])
        mb = statistics.median(x[name] for x in runs["B"])
        ratio = statistics.median(y[name] / x[name] for x, y in zip(runs["A"], runs["B"], strict=True))
        print(f"{name}: A (base) {ma:.1f}, B (this tree) {mb:.1f}, B/A {ratio:.3f}")


if __name__ == "__main__":
    main()
