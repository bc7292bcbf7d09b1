"""`audit export` and `audit verify` at 10k / 100k / 1M entries: seconds and peak RSS, and their growth.

    .venv/bin/python -m bench.audit_scale                          # 10k, 100k, 1M with this checkout
    .venv/bin/python -m bench.audit_scale --sizes 10000,100000 \\
        --python after=.venv/bin/python --python before=../main/.venv/bin/python   # A/B, same Redis

A Redis of its own (core 1) is filled with real audit entries: signed deliveries, digests, MACs keyed from a
bench secret and the SHA-1 chain, written as the ingest script writes them (the same fields; one in 100 is a
duplicate whose 2 KiB body is kept once by digest), with pipelined XADDs instead of HTTP so that a million
take seconds. The log grows from one size to the next, so every size is one chain that verifies.

Each command then runs as its own process on core 0, as an operator runs it: `audit export --out FILE`,
`audit verify` (from Redis) and `audit verify --file FILE`. Wall seconds, and peak RSS from the command's
rusage (``ru_maxrss``, what `/usr/bin/time -v` prints as "Maximum resident set size"). Time per entry and
the growth of both against the smallest size are printed. CPU seconds (user + system, also from rusage) are
quoted beside wall seconds: on a shared machine they move less; memory is the robust figure. A command's
start-up (imports, ~1 s) is in every figure, so growth is read between the larger sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.run import EXAMPLES, LOAD_CORE, PY, SECRET, SERVER_CORE, TASKSET, RedisProc, log
from runinfra_webhooks.service.core.audit import GENESIS, EntryMac, body_sha256, chain_hash, entry_digest, entry_key
from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.storage import keys

DUPLICATE_EVERY = 100  # one entry in so many is a replayed duplicate of a large body (a body_ref)
BATCH = 2000  # XADDs per pipeline


@dataclass
class Chain:
    """Where the filled log ends: the next entry chains from it."""

    seq: int = 0
    prev: str = GENESIS


@dataclass(frozen=True)
class Run:
    label: str
    command: str
    entries: int
    seconds: float
    cpu_seconds: float
    peak_rss_kib: int


class Filler:
    """Writes audit entries the way ingest.lua does (field for field), from the real digest, MAC and chain."""

    def __init__(self, client: Any, secret: str) -> None:
        self._client = client
        self._secret = secret.encode()
        self._mac = EntryMac(entry_key(self._secret))
        self._template = json.loads((EXAMPLES / "deployment.created.json").read_text())
        big = json.loads((EXAMPLES / "transcription.completed.json").read_text())
        big["data"]["text"] = "the same long message, replayed " * 64
        self._big = json.dumps(big).encode()  # >= 1024 bytes: a duplicate keeps it once, by digest
        self._big_hex = body_sha256(self._big).hex()
        self._started_ms = int(time.time() * 1000) - 86_400_000
        self.chain = Chain()

    def fill_to(self, total: int) -> None:
        client = self._client
        client.set(keys.audit_body(self._big_hex), self._big)
        pipe = client.pipeline(transaction=False)
        chain = self.chain
        while chain.seq < total:
            seq = chain.seq + 1
            received_ms = self._started_ms + seq  # one a millisecond: receive times keep stream order
            duplicate = seq % DUPLICATE_EVERY == 0
            event_id = f"evt_bench_{seq:09d}"
            if duplicate:
                body, outcome = self._big, "duplicate"
            else:
                self._template["id"] = event_id
                body, outcome = json.dumps(self._template).encode(), "queued"
            header = sign(body, self._secret, received_ms // 1000).encode()
            delivery_id = uuid.uuid4().hex
            request_id = f"req_{seq:09d}"
            body_hash = body_sha256(body)
            digest = entry_digest(event_id=event_id, received_ms=received_ms, request_id=request_id, secret_index=0,
                                  header=header, body=body, delivery_id=delivery_id, body_hash=body_hash)
            hash_ = chain_hash(chain.prev, seq, outcome, digest)
            fields: dict[str, str | bytes | int] = {
                "seq": seq, "prev": chain.prev, "hash": hash_, "outcome": outcome, "event_id": event_id,
                "received_ms": received_ms, "request_id": request_id, "secret_index": 0, "header": header,
                "body": b"" if duplicate else body, "digest": digest, "delivery_id": delivery_id,
                "mac": self._mac(outcome, digest),
            }
            if duplicate:
                fields["body_ref"] = self._big_hex
            pipe.xadd(keys.AUDIT_STREAM, fields)
            chain.seq, chain.prev = seq, hash_
            if seq % BATCH == 0 or seq == total:
                pipe.hset(keys.AUDIT_HEAD, mapping={"seq": seq, "hash": hash_})
                pipe.execute()


# Linux starts a forked child's peak RSS at its parent's (and keeps it across exec), so a command forked by
# this process could not report less than this process's peak. A fresh, small interpreter forks it instead,
# as `/usr/bin/time -v` would, and reports its rusage on the last line of stderr.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "runinfra_webhooks", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
"""


def run_cli(python: str, env: dict[str, str], *args: str) -> tuple[float, float, int, str]:
    """One console-script process on the server core: (wall seconds, CPU seconds, peak RSS KiB, stderr)."""
    started = time.perf_counter()
    out = subprocess.run([TASKSET, "-c", SERVER_CORE, python, "-c", MEASURE, *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    stderr, _, measured = out.stderr.rstrip("\n").rpartition("\n")
    rss, cpu, code = measured.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {code}: {stderr[-2000:]}")
    return seconds, float(cpu), int(rss), stderr


def measure(label: str, python: str, env: dict[str, str], entries: int, workdir: Path) -> list[Run]:
    export = workdir / f"export-{label}.jsonl"
    runs: list[Run] = []
    try:
        for command, args in (("export", ("audit", "export", "--out", str(export))),
                              ("verify (Redis)", ("audit", "verify")),
                              ("verify --file", ("audit", "verify", "--file", str(export)))):
            seconds, cpu, rss, stderr = run_cli(python, env, *args)
            if command.startswith("verify") and f"audit log ok: {entries} entries" not in stderr:
                raise RuntimeError(f"{command} did not verify {entries} entries: {stderr[-2000:]}")
            runs.append(Run(label, command, entries, seconds, cpu, rss))
            log(f"{label:>8} {command:<15} {entries:>9} entries  {seconds:7.2f} s  {cpu:7.2f} s CPU  "
                f"{rss / 1024:8.1f} MiB")
    finally:
        export.unlink(missing_ok=True)
    return runs


def table(runs: list[Run]) -> str:
    lines = ["| code | command | entries | wall s | CPU s | peak RSS MiB | CPU us / entry | CPU x | RSS x |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    smallest: dict[tuple[str, str], Run] = {}
    for r in sorted(runs, key=lambda r: (r.label, r.command, r.entries)):
        base = smallest.setdefault((r.label, r.command), r)
        lines.append(f"| {r.label} | {r.command} | {r.entries:,} | {r.seconds:.2f} | {r.cpu_seconds:.2f} | "
                     f"{r.peak_rss_kib / 1024:.1f} | {r.cpu_seconds / r.entries * 1e6:.1f} | "
                     f"{r.cpu_seconds / base.cpu_seconds:.1f} | {r.peak_rss_kib / base.peak_rss_kib:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="entries, comma-separated, ascending")
    parser.add_argument("--python", action="append", default=[], metavar="LABEL=PATH",
                        help="an interpreter whose install runs the commands (repeat for an A/B); default: this one")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    pythons = [tuple(p.split("=", 1)) for p in args.python] or [("this", PY)]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="audit-scale-") as tmp:
        workdir = Path(tmp)
        redis = RedisProc(workdir / "redis", aof=False)
        redis.start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINFRA_")}
            env.update(REDIS_URL=redis.url, RUNINFRA_WEBHOOK_SECRET=SECRET)
            filler = Filler(redis.client(), SECRET)
            for size in sizes:
                started = time.perf_counter()
                filler.fill_to(size)
                log(f"filled to {size} entries in {time.perf_counter() - started:.1f} s; Redis used_memory "
                    f"{redis.used_memory() / 2**20:.0f} MiB (Redis on core {LOAD_CORE})")
                for label, python in pythons:
                    runs.extend(measure(label, python, env, size, workdir))
        finally:
            redis.stop()
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
