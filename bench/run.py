"""The whole bench in one run: its own Redis, the ingest comparison, RSS growth, worker drain, scale-out.

    .venv/bin/python -m bench            # full run, about 8-10 minutes on 2 cores
    .venv/bin/python -m bench --quick    # the same measurements, shorter and fewer repeats (~2 minutes)

Placement on the 2-core machine: the process under test (receiver, bare endpoint or worker) is pinned to
core 0; the load generator (wrk), Redis and the gateway emulator share core 1. Raw results go to
bench/results/<timestamp>/ (git-ignored); a summary is printed and written to summary.json there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict, cast

import httpx
import redis as sync_redis
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis
from redis.client import Pipeline

from runinfra_webhooks.service.core.signature import sign
from runinfra_webhooks.service.storage import arq_job, keys
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
EXAMPLES = ROOT / "service" / "devtools" / "examples"
SECRET = "whsec_bench_0123456789abcdef"  # noqa: S105 - the bench signs its own deliveries with it
SERVER_CORE = "0"
LOAD_CORE = "1"
ALL_TYPES = ("deployment.created", "deployment.ready", "deployment.updated", "deployment.failed",
             "deployment.deleted", "transcription.completed")
DEPLOYMENT_TYPES = ("deployment.created", "deployment.failed", "deployment.deleted", "deployment.updated",
                    "deployment.ready")


def _which(name: str) -> str:
    return shutil.which(name) or name


TASKSET, WRK, REDIS_SERVER, GIT = _which("taskset"), _which("wrk"), _which("redis-server"), _which("git")


# --- small helpers -------------------------------------------------------------------------------
def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) in KiB, from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def example(type_: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EXAMPLES / f"{type_}.json").read_text())
    return event


# --- Redis ---------------------------------------------------------------------------------------
class Commands(Protocol):
    """What the bench asks its Redis, typed as the synchronous client answers. redis-py declares each command
    once for its synchronous and asyncio clients (``Awaitable[Any] | Any``), which cannot be used as a number
    or a dict without a cast."""

    def ping(self) -> bool: ...
    def flushall(self) -> bool: ...
    def config_resetstat(self) -> bool: ...
    def bgrewriteaof(self) -> bool: ...
    def info(self, section: str) -> dict[str, Any]: ...
    def xlen(self, name: str) -> int: ...
    def zcard(self, name: str) -> int: ...
    def ttl(self, name: str) -> int: ...
    def memory_usage(self, key: str, samples: int | None = None) -> int | None: ...
    def script_load(self, script: str) -> str: ...
    def pipeline(self, transaction: bool = True) -> Pipeline: ...


@dataclass
class RedisProc:
    directory: Path
    aof: bool
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Commands:
        return cast(Commands, sync_redis.Redis(host="127.0.0.1", port=self.port))

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [TASKSET, "-c", LOAD_CORE, REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--logfile", str(self.directory / "redis.log")]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except sync_redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reset(self) -> None:
        c = self.client()
        c.flushall()
        c.config_resetstat()
        if self.aof:
            c.bgrewriteaof()

    def counters(self) -> dict[str, float]:
        """Redis's own CPU seconds and the number of socket reads it processed (~ round trips)."""
        c = self.client()
        cpu, stats = c.info("cpu"), c.info("stats")
        return {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                "reads": float(stats.get("total_reads_processed", 0))}

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def commandstats(self) -> dict[str, dict[str, float]]:
        return {k.removeprefix("cmdstat_"): v for k, v in self.client().info("commandstats").items()}

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


# --- deliveries ----------------------------------------------------------------------------------
def make_body(type_: str, event_id: str, created: int, i: int) -> bytes:
    event = example(type_)
    event["id"] = event_id
    event["created"] = created
    data = event["data"]
    if "deployment_id" in data:
        data["deployment_id"] = f"dep_{i % 100:03d}"  # a bounded set of deployments, as in real life
    if "request_id" in data:
        data["request_id"] = f"req_{i:08d}"
    return json.dumps(event, separators=(",", ":")).encode()


def write_requests(path: Path, n: int, prefix: str, types: tuple[str, ...] = ALL_TYPES) -> None:
    """n unique, validly signed deliveries (timestamps: now), one per line: signature TAB body."""
    now = int(time.time())
    templates = {t: example(t) for t in types}
    with open(path, "w") as f:
        for i in range(n):
            t = types[i % len(types)]
            event = dict(templates[t])
            event["id"] = f"evt_{prefix}_{i:08d}"
            event["created"] = now + i // 1000
            body = json.dumps(event, separators=(",", ":"))
            f.write(sign(body.encode(), SECRET, now))
            f.write("\t")
            f.write(body)
            f.write("\n")


# --- HTTP servers under test ---------------------------------------------------------------------
def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNINFRA_", "REDIS_"))}
    env.update({"RUNINFRA_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url, "RUNINFRA_LOG_LEVEL": "info",
                "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def start_server(kind: str, port: int, redis_url: str, out: Path, env_extra: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    if kind == "bare":
        cmd = [PY, "-m", "bench.bare_app", "--port", str(port)]
    elif kind.startswith("variant:"):
        cmd = [PY, "-m", "bench.variant_app", "--port", str(port), "--variant", kind.removeprefix("variant:")]
    elif kind.startswith("floor:"):
        cmd = [PY, "-m", "bench.floor_app", "--port", str(port), "--variant", kind.removeprefix("floor:")]
    else:
        cmd = [PY, "-m", "runinfra_webhooks", "serve", "--port", str(port)]
    # The receiver logs one JSON line per delivery to stdout, as in production; it goes to /dev/null here
    # (the rendering cost stays in the process, the write is a cheap syscall).
    env = server_env(redis_url, **(env_extra or {}))
    proc = subprocess.Popen([TASKSET, "-c", SERVER_CORE, *cmd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(out, "ab"))
    wait_port(port, proc)
    return proc


def wrk_command(url: str, requests_file: Path, *, connections: int, duration: float, limit: int = 0,
                done_file: Path | None = None) -> list[str]:
    """wrk on the load core, one thread, sending the signed deliveries of ``requests_file`` (``bench/wrk.lua``);
    with ``limit``, it stops after that many answers and touches ``done_file``."""
    cmd = [TASKSET, "-c", LOAD_CORE, WRK, "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
           "-s", str(ROOT / "bench" / "wrk.lua"), url + "/webhooks/runinfra", "--", str(requests_file)]
    if limit:
        cmd += [str(limit), str(done_file)]
    return cmd


def run_wrk(url: str, requests_file: Path, *, connections: int, duration: float, limit: int = 0,
            done_file: Path | None = None, raw_out: Path | None = None) -> dict[str, Any]:
    cmd = wrk_command(url, requests_file, connections=connections, duration=duration, limit=limit,
                      done_file=done_file)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    if raw_out is not None:
        raw_out.write_text(res.stdout + res.stderr)
    return parse_wrk(res.stdout, res.stderr)


def parse_wrk(stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            return data
    raise RuntimeError(f"wrk printed no result:\n{stdout}\n{stderr}")


# --- 1a/1b: ingest, bare vs receiver --------------------------------------------------------------
def ingest_once(kind: str, rd: RedisProc, out: Path, tag: str, *, connections: int, duration: float,
                warmup: float, expected_rps: int, profile: bool = False, env_extra: dict[str, str] | None = None
                ) -> dict[str, Any]:
    port = free_port()
    rd.reset()
    n_meas = int(expected_rps * duration * 1.3) + 1000
    n_warm = int(expected_rps * warmup * 1.3) + 500
    warm_file, meas_file = out / f"{tag}-warm.req", out / f"{tag}.req"
    write_requests(warm_file, n_warm, f"{tag}w")
    write_requests(meas_file, n_meas, tag)
    stderr_log = out / f"{tag}-server.log"
    proc = start_server(kind, port, rd.url, stderr_log, env_extra)
    spy: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        run_wrk(url, warm_file, connections=connections, duration=warmup)
        rd.client().config_resetstat()
        audit_before = rd.client().xlen(keys.AUDIT_STREAM)
        cpu0 = proc_cpu_s(proc.pid)
        rc0 = rd.counters()
        if profile:
            spy = subprocess.Popen(
                [TASKSET, "-c", LOAD_CORE, str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--format", "raw",
                 "--rate", "200", "--duration", str(int(duration)), "--idle", "-o",
                 str(out / f"{tag}.pyspy.txt"), "--pid", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = run_wrk(url, meas_file, connections=connections, duration=duration, raw_out=out / f"{tag}.wrk.txt")
        cpu1 = proc_cpu_s(proc.pid)
        rc1 = rd.counters()
        if spy is not None:
            spy.wait(timeout=duration + 30)
        res.update(proc_status(proc.pid))
        res["server_cpu_s"] = cpu1 - cpu0
        res["cpu_us_per_req"] = (cpu1 - cpu0) / max(res["requests"], 1) * 1e6
        if kind in ("receiver", "variant:full", "variant:full-edge", "variant:no-index"):
            stats = rd.commandstats()
            ev = stats.get("evalsha", {})
            res["redis_evalsha_calls"] = int(ev.get("calls", 0))
            res["redis_evalsha_usec_per_call"] = float(ev.get("usec_per_call", 0))
            res["redis_total_calls"] = int(sum(v.get("calls", 0) for k, v in stats.items() if k != "config"))
            res["audit_entries"] = rd.client().xlen(keys.AUDIT_STREAM) - audit_before
            res["redis_cpu_us_per_event"] = (rc1["cpu_s"] - rc0["cpu_s"]) / max(res["audit_entries"], 1) * 1e6
            res["redis_reads_per_event"] = (rc1["reads"] - rc0["reads"]) / max(res["audit_entries"], 1)
            res["queued"] = rd.client().zcard(keys.ARQ_QUEUE)
    finally:
        stop(proc)
        if spy is not None:
            stop(spy)
        for f in (warm_file, meas_file):
            f.unlink(missing_ok=True)
    res["kind"], res["tag"] = kind, tag
    ok = res["statuses"].get("202", 0)
    res["errors"] = (res["err_connect"] + res["err_read"] + res["err_write"] + res["err_timeout"]
                     + sum(v for k, v in res["statuses"].items() if k != "202"))
    res["accepted_202"] = ok
    return res


def bench_ingest(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = ("bare", "receiver") if r % 2 == 0 else ("receiver", "bare")
        for kind in order:
            tag = f"ingest-{kind}-{r}"
            res = ingest_once(kind, rd, out, tag, connections=args.connections, duration=args.duration,
                              warmup=args.warmup, expected_rps=2000 if kind == "bare" else 6000)
            res["load"] = loadavg()
            runs.append(res)
            log(f"{tag}: {res['rps']:.0f} req/s p50 {res['p50_us'] / 1000:.2f} ms p99 {res['p99_us'] / 1000:.2f} ms "
                f"errors {res['errors']} peak RSS {res.get('VmHWM', 0) / 1024:.1f} MiB "
                f"cpu/req {res['cpu_us_per_req']:.0f} us (load {res['load']})")
    summary: dict[str, Any] = {"runs": runs}
    for kind in ("bare", "receiver"):
        rs = [r for r in runs if r["kind"] == kind]
        summary[kind] = {
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50_us"] / 1000 for r in rs]),
            "p99_ms": median([r["p99_us"] / 1000 for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "peak_rss_mib": median([r.get("VmHWM", 0) / 1024 for r in rs]),
            "cpu_us_per_req": median([r["cpu_us_per_req"] for r in rs]),
        }
    rec = [r for r in runs if r["kind"] == "receiver"]
    summary["receiver"]["redis_calls_per_accepted"] = median(
        [r["redis_evalsha_calls"] / max(r["audit_entries"], 1) for r in rec])
    summary["receiver"]["redis_evalsha_usec_per_call"] = median([r["redis_evalsha_usec_per_call"] for r in rec])
    summary["receiver"]["redis_cpu_us_per_event"] = median([r["redis_cpu_us_per_event"] for r in rec])
    summary["receiver"]["redis_reads_per_event"] = median([r["redis_reads_per_event"] for r in rec])
    summary["receiver"]["wrapped"] = sum(r["wrapped"] for r in rec)
    # Ratios per repeat (same repeat = adjacent in time), then the median of those.
    pairs = [(b, v) for b, v in zip([r for r in runs if r["kind"] == "bare"], rec, strict=True)]
    summary["ratio_rps"] = median([v["rps"] / b["rps"] for b, v in pairs])
    summary["ratio_p99"] = median([v["p99_us"] / b["p99_us"] for b, v in pairs])
    return summary


BREAKDOWN = ("bare", "variant:no-redis-no-log", "variant:no-redis", "variant:full")
EDGE = ("variant:full", "variant:full-edge")


def bench_edge(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The receiver with uvicorn's stock httptools protocol (A) and with the bounded one (B), alternated
    A B, B A, ...; server CPU per request and req/s, medians, and the median of the per-repeat B/A ratios."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in EDGE}
    for r in range(args.edge_repeats):
        for kind in EDGE if r % 2 == 0 else tuple(reversed(EDGE)):
            tag = f"edge-{kind.replace(':', '-')}-{r}"
            res = ingest_once(kind, rd, out, tag, connections=args.connections, duration=args.breakdown_duration,
                              warmup=args.warmup, expected_rps=6000)
            runs[kind].append(res)
            log(f"{tag}: {res['rps']:.0f} req/s, {res['cpu_us_per_req']:.0f} us CPU per request, "
                f"statuses {res['statuses']}")
    a, b = runs[EDGE[0]], runs[EDGE[1]]
    return {
        "stock": {"rps": median([x["rps"] for x in a]), "cpu_us_per_req": median([x["cpu_us_per_req"] for x in a])},
        "bounded": {"rps": median([x["rps"] for x in b]), "cpu_us_per_req": median([x["cpu_us_per_req"] for x in b])},
        "ratio_cpu_per_req": median([y["cpu_us_per_req"] / x["cpu_us_per_req"] for x, y in zip(a, b, strict=True)]),
        "ratio_rps": median([y["rps"] / x["rps"] for x, y in zip(a, b, strict=True)]),
        "redis_evalsha_usec_per_call": median([x["redis_evalsha_usec_per_call"] for x in a + b]),
    }
FLOOR = ("bare", "floor:no-redis-no-log", "floor:no-log", "floor:full")


def bench_breakdown(rd: RedisProc, out: Path, args: argparse.Namespace,
                    kinds: tuple[str, ...] = BREAKDOWN) -> dict[str, Any]:
    """Server CPU per request with parts of the receiver switched off (or of the floor app), interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(args.breakdown_repeats):
        for kind in kinds if r % 2 == 0 else tuple(reversed(kinds)):
            tag = f"breakdown-{kind.replace(':', '-')}-{r}"
            res = ingest_once(kind, rd, out, tag, connections=args.connections, duration=args.breakdown_duration,
                              warmup=args.warmup, expected_rps=2000 if kind == "bare" else 9000)
            runs[kind].append(res)
            log(f"{tag}: {res['rps']:.0f} req/s, {res['cpu_us_per_req']:.0f} us CPU per request, "
                f"statuses {res['statuses']}")
    return {k: {"rps": median([x["rps"] for x in v]), "cpu_us_per_req": median([x["cpu_us_per_req"] for x in v]),
                "p99_ms": median([x["p99_us"] / 1000 for x in v])} for k, v in runs.items()}


def bench_profile(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    res = ingest_once("receiver", rd, out, "profile-receiver", connections=args.connections,
                      duration=args.duration, warmup=args.warmup, expected_rps=6000, profile=True)
    log(f"profile run: {res['rps']:.0f} req/s under py-spy (sampling slows it)")
    return {"rps_under_profiler": res["rps"], "table": summarise_profile(out / "profile-receiver.pyspy.txt")}


# Inclusive shares of interesting frames, by function-name substring as py-spy prints it.
PROFILE_BUCKETS = {
    "uvicorn HTTP protocol (parse, transport)": ["httptools_impl.py"],
    "starlette routing + request/response": ["starlette/routing.py", "starlette/responses.py",
                                             "starlette/requests.py"],
    "read_limited_body": ["read_limited_body"],
    "signature.verify (HMAC)": ["verify (service/signature.py"],
    "JSON parse (parse_json_object)": ["parse_json_object"],
    "pydantic envelope + event": ["parse_envelope", "parse_event"],
    "audit digest (sha256)": ["entry_digest"],
    "Ingestor (command, coalesced round trip)": ["ingest (service/ingest.py", "_flush (service/ingest.py"],
    "structlog log line": ["structlog/", "_proxy_to_logger", " info (structlog"],
    "prometheus metrics": ["prometheus_client/"],
    "JSONResponse render": ["render (starlette/responses.py", "init_headers"],
    "RequestIdMiddleware": ["__call__ (service/request_id.py"],
    "idle in the event loop (select/epoll)": ["select (selectors.py", "run_forever", "_run_once"],
}


def summarise_profile(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    total = 0
    counts: dict[str, int] = dict.fromkeys(PROFILE_BUCKETS, 0)
    self_counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        c = int(n)
        total += c
        for name, needles in PROFILE_BUCKETS.items():
            if any(nd in stack for nd in needles):
                counts[name] += c
        leaf = stack.rsplit(";", 1)[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + c
    table = [(k, 100.0 * v / max(total, 1)) for k, v in counts.items()]
    top_self = sorted(self_counts.items(), key=lambda kv: -kv[1])[:15]
    (path.parent / "profile-top-self.txt").write_text(
        "\n".join(f"{100.0 * v / max(total, 1):5.1f}%  {k}" for k, v in top_self) + "\n")
    return table


# --- 2: receiver RSS from 10k to 200k deliveries ---------------------------------------------------
def bench_rss(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    total = args.rss_total
    marks = sorted({10_000, *(m for m in (50_000, 100_000, 150_000, 200_000) if m <= total), total})
    rd.reset()
    req_file, done_file = out / "rss.req", out / "rss.done"
    done_file.unlink(missing_ok=True)
    # A few more lines than the limit: the connections still in flight when the limit is reached must not
    # wrap around to ids already sent (they would be answered 200 duplicate).
    write_requests(req_file, total + 4 * args.connections, "rss")
    port = free_port()
    proc = start_server("receiver", port, rd.url, out / "rss-server.log")
    rss_at: dict[int, dict[str, int]] = {}
    samples: list[tuple[int, int]] = []
    try:
        cmd = wrk_command(f"http://127.0.0.1:{port}", req_file, connections=args.connections, duration=3600,
                          limit=total, done_file=done_file)
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        c = rd.client()
        deadline = time.monotonic() + 900
        pending = list(marks)
        while pending and time.monotonic() < deadline:
            n = c.xlen(keys.AUDIT_STREAM)
            st = proc_status(proc.pid)
            samples.append((n, st.get("VmRSS", 0)))
            while pending and n >= pending[0]:
                rss_at[pending[0]] = {"n": n, **st}
                pending.pop(0)
            if done_file.exists() and not pending:
                break
            time.sleep(0.2)
        time.sleep(0.3)
        wrk.send_signal(signal.SIGINT)
        o, e = wrk.communicate(timeout=30)
        (out / "rss.wrk.txt").write_text(o + e)
        res = parse_wrk(o, e)
        final = proc_status(proc.pid)
    finally:
        stop(proc)
        req_file.unlink(missing_ok=True)
    first, last = rss_at.get(marks[0], {}), rss_at.get(marks[-1], {})
    growth = (last.get("VmRSS", 0) - first.get("VmRSS", 0)) / max(first.get("VmRSS", 1), 1)
    (out / "rss-samples.json").write_text(json.dumps(samples))
    redis_mem = rd.used_memory()
    ingested = rd.client().xlen(keys.AUDIT_STREAM)
    summary = {
        "marks": {str(k): {"n": v["n"], "rss_mib": v.get("VmRSS", 0) / 1024} for k, v in rss_at.items()},
        "growth": growth, "final_peak_mib": final.get("VmHWM", 0) / 1024, "rps": res["rps"],
        "errors": res["err_connect"] + res["err_read"] + res["err_write"] + res["err_timeout"]
        + sum(v for k, v in res["statuses"].items() if k != "202"),
        "statuses": res["statuses"], "redis_used_memory_mib": redis_mem / 2**20,
        "redis_bytes_per_queued_event": redis_mem / max(ingested, 1), "ingested": ingested,
    }
    log(f"RSS: {summary['marks']} growth {growth * 100:.1f}% ({res['rps']:.0f} req/s, statuses {res['statuses']})")
    return summary


# --- 1c: worker drain ------------------------------------------------------------------------------
async def prefill(redis_url: str, n: int, prefix: str, types: tuple[str, ...], settings_kw: IngestLimits) -> None:
    """n deliveries through the real ingest path (the receiver's Ingestor; one EVALSHA each)."""
    client = Redis.from_url(redis_url)
    ing = Ingestor(client, **settings_kw)
    now_s = int(time.time())

    async def one(i: int) -> None:
        t = types[i % len(types)]
        event_id = f"evt_{prefix}_{i:08d}"
        body = make_body(t, event_id, now_s + i, i)
        header = sign(body, SECRET, now_s).encode()
        outcome = await ing.ingest(Delivery(
            wanted=IngestOutcome.QUEUED, event_id=event_id, type=t, created=now_s + i, header=header, body=body,
            request_id=f"bench{i}", secret_index=0, received_ms=time.time_ns() // 1_000_000))
        assert outcome is IngestOutcome.QUEUED, outcome

    for start in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    await client.aclose()


async def enqueue_noop(redis_url: str, n: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=arq_job.serialize,
                             job_deserializer=arq_job.deserialize)
    for start in range(0, n, 500):
        await asyncio.gather(*(pool.enqueue_job("bench_noop", i) for i in range(start, min(n, start + 500))))
    await pool.aclose()


def run_drain(mode: str, workers: int, env: dict[str, str], out: Path, tag: str) -> dict[str, Any]:
    """Start ``workers`` drain processes at once (worker i on core i % 2), wait, combine their timings."""
    procs = []
    for w in range(workers):
        core = SERVER_CORE if w % 2 == 0 else LOAD_CORE
        errf = open(out / f"{tag}-w{w}.stderr", "wb")
        procs.append((subprocess.Popen([TASKSET, "-c", core, PY, "-m", "bench.drain", mode], cwd=ROOT, env=env,
                                       stdout=open(out / f"{tag}-w{w}.stdout", "wb"), stderr=errf), errf))
    results = []
    cpu = 0.0
    for p, errf in procs:
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        errf.close()
        cpu += ru.ru_utime + ru.ru_stime
        text = Path(errf.name).read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("DRAIN_JSON ")), None)
        if p.returncode != 0 or line is None:
            raise RuntimeError(f"{tag}: worker exited {p.returncode}; see {errf.name}")
        results.append(json.loads(line.removeprefix("DRAIN_JSON ")))
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    complete = sum(r["complete"] for r in results)
    return {"elapsed_s": end - start, "complete": complete, "failed": sum(r["failed"] for r in results),
            "retried": sum(r["retried"] for r in results), "rate": complete / (end - start), "cpu_s": cpu,
            "per_worker": results}


def states(rd: RedisProc, prefix: str, n: int) -> dict[str, int]:
    c = rd.client()
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        pipe.hget(keys.event(f"evt_{prefix}_{i:08d}"), "state")
    counts: dict[str, int] = {}
    for s in pipe.execute():
        k = s.decode() if s else "missing"
        counts[k] = counts.get(k, 0) + 1
    return counts


class IngestLimits(TypedDict):
    """The ``Ingestor``'s keyword arguments the service's settings decide."""

    dedup_ttl: int
    event_retention: int
    dead_letter_retention: int
    job_expiry_s: int


def settings_kw() -> IngestLimits:
    from runinfra_webhooks.service.settings import load_settings

    s = load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET)
    return {"dedup_ttl": s.dedup_ttl, "event_retention": s.event_retention,
            "dead_letter_retention": s.dead_letter_retention, "job_expiry_s": s.lost_deadline}


def memory_breakdown(rd: RedisProc, prefix: str) -> dict[str, float]:
    c = rd.client()
    eid = f"evt_{prefix}_{0:08d}"
    xlen = c.xlen(keys.AUDIT_STREAM) or 1
    return {
        "event_record": float(c.memory_usage(keys.event(eid), samples=0) or 0),
        "dedup_mark": float(c.memory_usage(keys.dedup(eid), samples=0) or 0),
        "audit_entry": float((c.memory_usage(keys.AUDIT_STREAM, samples=0) or 0) / xlen),
        "event_ttl_s": float(c.ttl(keys.event(eid))),
        "dedup_ttl_s": float(c.ttl(keys.dedup(eid))),
    }


def drain_real(rd: RedisProc, out: Path, tag: str, n: int, workers: int, types: tuple[str, ...],
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    rd.reset()
    m0 = rd.used_memory()
    asyncio.run(prefill(rd.url, n, tag, types, settings_kw()))
    m1 = rd.used_memory()
    rd.client().config_resetstat()
    rc0 = rd.counters()
    res = run_drain("real", workers, server_env(rd.url, **(extra_env or {})), out, tag)
    rc1 = rd.counters()
    res["redis_cpu_us_per_event"] = (rc1["cpu_s"] - rc0["cpu_s"]) / n * 1e6
    m2 = rd.used_memory()
    res["states"] = states(rd, tag, n)
    res["bytes_per_event_queued"] = (m1 - m0) / n
    res["bytes_per_event_processed"] = (m2 - m0) / n
    res["memory_breakdown"] = memory_breakdown(rd, tag)
    stats = rd.commandstats()
    res["redis_usec_per_event"] = sum(v.get("usec", 0) for k, v in stats.items() if k != "config") / n
    res["redis_calls_per_event"] = sum(v.get("calls", 0) for k, v in stats.items() if k != "config") / n
    res["load"] = loadavg()
    return res


def drain_noop(rd: RedisProc, out: Path, tag: str, n: int, workers: int) -> dict[str, Any]:
    rd.reset()
    asyncio.run(enqueue_noop(rd.url, n))
    rd.client().config_resetstat()
    rc0 = rd.counters()
    res = run_drain("noop", workers, server_env(rd.url), out, tag)
    rc1 = rd.counters()
    res["redis_cpu_us_per_event"] = (rc1["cpu_s"] - rc0["cpu_s"]) / n * 1e6
    stats = rd.commandstats()
    res["redis_usec_per_event"] = sum(v.get("usec", 0) for k, v in stats.items() if k != "config") / n
    res["redis_calls_per_event"] = sum(v.get("calls", 0) for k, v in stats.items() if k != "config") / n
    res["load"] = loadavg()
    return res


def fmt_drain(tag: str, r: dict[str, Any]) -> str:
    return (f"{tag}: {r['complete']} jobs in {r['elapsed_s']:.2f} s = {r['rate']:.0f}/s, cpu {r['cpu_s']:.2f} s, "
            f"failed {r['failed']} retried {r['retried']} states {r.get('states', '-')} (load {r['load']})")


@contextlib.contextmanager
def gateway_stub(out: Path, latency: float) -> Iterator[tuple[str, int]]:
    port = free_port()
    errf = open(out / "gateway-stub.log", "ab")
    proc = subprocess.Popen([TASKSET, "-c", LOAD_CORE, PY, "-m", "runinfra_webhooks", "gateway-stub", "--latency",
                             str(latency), "--port", str(port), "--api-key", "sk-stub"], cwd=ROOT,
                            env=server_env("redis://unused"), stdout=subprocess.DEVNULL, stderr=errf)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        stop(proc)
        errf.close()


def gateway_drain(rd: RedisProc, out: Path, tag: str, n: int, workers: int, base_url: str,
                  artifacts_root: Path | None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """n ``transcription.completed`` events drained against the emulator; also how long the emulator itself
    took per call (arrival to answer, from its call log), so its own queueing is not taken for the worker's."""
    artifacts = (artifacts_root or out) / f"artifacts-{tag}"
    # The emulator's tone lasts 0.1 s + 10 ms per character of the reply (1 s for the default template): a
    # short fixed reply keeps the audio file, and so the disk's share of the run, small.
    env = {"RUNINFRA_BASE_URL": base_url, "RUNINFRA_API_KEY": "sk-stub", "RUNINFRA_TTS_MODEL": "tts-bench",
           "RUNINFRA_TTS_VOICE": "alloy", "RUNINFRA_FOLLOWUP_TEMPLATE": "Thanks!",
           "RUNINFRA_ARTIFACTS_DIR": str(artifacts), **(extra_env or {})}
    control = base_url.removesuffix("/v1") + "/_stub"
    auth = {"Authorization": "Bearer sk-stub"}
    httpx.post(f"{control}/reset", headers=auth).raise_for_status()
    try:
        res = drain_real(rd, out, tag, n, workers, ("transcription.completed",), env)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    calls = httpx.get(f"{control}/calls", headers=auth).json()
    res["emulator_answer_ms"] = median([(c["answered"] - c["arrived"]) * 1000 for c in calls if c["answered"]])
    return res


def bench_drain(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, ng = args.drain_n, args.gateway_n
    real: list[dict[str, Any]] = []
    noop: list[dict[str, Any]] = []
    real2: list[dict[str, Any]] = []
    noop2: list[dict[str, Any]] = []
    gw: list[dict[str, Any]] = []
    gw2: list[dict[str, Any]] = []
    for r in range(args.drain_repeats):
        order = ("real", "noop") if r % 2 == 0 else ("noop", "real")
        for kind in order:
            if kind == "real":
                res = drain_real(rd, out, f"drain-real-{r}", n, 1, DEPLOYMENT_TYPES)
                real.append(res)
            else:
                res = drain_noop(rd, out, f"drain-noop-{r}", n, 1)
                noop.append(res)
            log(fmt_drain(f"drain {kind} x1 #{r}", res))
    for r in range(args.scale_repeats):
        res = drain_real(rd, out, f"drain-real2-{r}", n, 2, DEPLOYMENT_TYPES)
        real2.append(res)
        log(fmt_drain(f"drain real x2 #{r}", res))
        res = drain_noop(rd, out, f"drain-noop2-{r}", n, 2)
        noop2.append(res)
        log(fmt_drain(f"drain noop x2 #{r}", res))

    from runinfra_webhooks.service.settings import load_settings

    concurrency = load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET).worker_concurrency
    with gateway_stub(out, args.latency) as (base_url, stub_pid):
        for r in range(args.gateway_repeats):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                tag = f"drain-gw{workers}-{r}"
                stub_cpu0 = proc_cpu_s(stub_pid)
                res = gateway_drain(rd, out, tag, ng, workers, base_url, args.artifacts_dir)
                res["stub_cpu_ms_per_call"] = (proc_cpu_s(stub_pid) - stub_cpu0) / ng * 1000
                (gw if workers == 1 else gw2).append(res)
                log(fmt_drain(f"drain gateway x{workers} #{r}", res))

    def rate(rs: list[dict[str, Any]]) -> float:
        return median([x["rate"] for x in rs])

    ceiling = concurrency / args.latency
    return {
        "n": n, "gateway_n": ng, "concurrency": concurrency, "latency_s": args.latency,
        "real_rate": rate(real), "noop_rate": rate(noop),
        "ratio_real_noop": median([a["rate"] / b["rate"] for a, b in zip(real, noop, strict=True)]),
        "real_cpu_us_per_job": median([x["cpu_s"] / x["complete"] * 1e6 for x in real]),
        "noop_cpu_us_per_job": median([x["cpu_s"] / x["complete"] * 1e6 for x in noop]),
        "real_redis_calls_per_event": median([x["redis_calls_per_event"] for x in real]),
        "noop_redis_calls_per_event": median([x["redis_calls_per_event"] for x in noop]),
        "real_redis_usec_per_event": median([x["redis_usec_per_event"] for x in real]),
        "noop_redis_usec_per_event": median([x["redis_usec_per_event"] for x in noop]),
        "real_redis_cpu_us_per_event": median([x["redis_cpu_us_per_event"] for x in real]),
        "noop_redis_cpu_us_per_event": median([x["redis_cpu_us_per_event"] for x in noop]),
        "real2_rate": rate(real2), "noop2_rate": rate(noop2),
        "scale_real_2_over_1": rate(real2) / rate(real) if real2 else None,
        "scale_noop_2_over_1": rate(noop2) / rate(noop) if noop2 else None,
        "gateway_rate": rate(gw), "gateway_ceiling": ceiling, "gateway_ratio": rate(gw) / ceiling,
        "gateway_effective_concurrency": rate(gw) * args.latency,
        "gateway2_rate": rate(gw2) if gw2 else None,
        "gateway_worker_cpu_ms_per_job": median([x["cpu_s"] / x["complete"] * 1000 for x in gw]),
        "gateway_stub_cpu_ms_per_call": median([x["stub_cpu_ms_per_call"] for x in gw]),
        "gateway_emulator_answer_ms": median([x["emulator_answer_ms"] for x in gw]),
        "gateway2_ratio": rate(gw2) / (2 * ceiling) if gw2 else None,
        "bytes_per_event_queued": median([x["bytes_per_event_queued"] for x in real]),
        "bytes_per_event_processed": median([x["bytes_per_event_processed"] for x in real]),
        "memory_breakdown": real[-1]["memory_breakdown"] if real else {},
        "gateway_bytes_per_event_processed": median([x["bytes_per_event_processed"] for x in gw]),
        "runs": {"real": real, "noop": noop, "real2": real2, "noop2": noop2, "gateway": gw, "gateway2": gw2},
    }


# --- 1d: the gateway limiter's own cost -----------------------------------------------------------
LIMITS_ABOVE_LOAD = {"RUNINFRA_GATEWAY_RATE_LIMIT": "/audio/speech=100000/s",
                     "RUNINFRA_GATEWAY_CONCURRENCY": "/audio/speech=100000"}


def bench_limits(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Gateway-bound drain, one worker, without limits and with limits configured far above the load,
    alternated (A B, B A, ...): what taking and giving back a permit costs per call."""
    from runinfra_webhooks.service.settings import load_settings

    ng = args.gateway_n
    concurrency = load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET).worker_concurrency
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with gateway_stub(out, args.latency) as (base_url, _):
        for r in range(args.limits_repeats):
            for kind in ("off", "on") if r % 2 == 0 else ("on", "off"):
                tag = f"limits-{kind}-{r}"
                res = gateway_drain(rd, out, tag, ng, 1, base_url, args.artifacts_dir,
                                    LIMITS_ABOVE_LOAD if kind == "on" else None)
                runs[kind].append(res)
                log(fmt_drain(f"limits {kind} #{r}", res))
    ceiling = concurrency / args.latency

    def med(kind: str, f: Any) -> float:
        return median([f(x) for x in runs[kind]])

    return {
        "gateway_n": ng, "ceiling": ceiling, "limits": LIMITS_ABOVE_LOAD,
        "off_rate": med("off", lambda x: x["rate"]), "on_rate": med("on", lambda x: x["rate"]),
        "emulator_answer_ms": median([x["emulator_answer_ms"] for x in runs["on"] + runs["off"]]),
        "ratio_on_off": median([a["rate"] / b["rate"] for a, b in zip(runs["on"], runs["off"], strict=True)]),
        "on_ratio_to_ceiling": med("on", lambda x: x["rate"]) / ceiling,
        "off_cpu_ms_per_job": med("off", lambda x: x["cpu_s"] / x["complete"] * 1000),
        "on_cpu_ms_per_job": med("on", lambda x: x["cpu_s"] / x["complete"] * 1000),
        "off_redis_calls_per_event": med("off", lambda x: x["redis_calls_per_event"]),
        "on_redis_calls_per_event": med("on", lambda x: x["redis_calls_per_event"]),
        "off_redis_cpu_us_per_event": med("off", lambda x: x["redis_cpu_us_per_event"]),
        "on_redis_cpu_us_per_event": med("on", lambda x: x["redis_cpu_us_per_event"]),
        "runs": runs,
    }


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats (~2 minutes)")
    p.add_argument("--only", default="ingest,breakdown,rss,drain",
                   help="comma-separated parts: ingest, breakdown, floor, edge, profile, rss, drain, tracing, limits "
                        "(default: ingest,breakdown,rss,drain)")
    p.add_argument("--profile", action="store_true", help="also run one receiver under py-spy")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=None, help="seconds per ingest run (10; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved ingest repeats (5; quick 2)")
    p.add_argument("--aof", action="store_true", help="run Redis with appendonly yes, appendfsync everysec")
    p.add_argument("--latency", type=float, default=0.2, help="gateway emulator latency, seconds")
    p.add_argument("--artifacts-dir", type=Path, default=None, metavar="DIR",
                   help="where gateway-bound drains write their audio files (default: the results directory; "
                        "a tmpfs such as /dev/shm takes the disk's fsyncs out of the figure)")
    p.add_argument("--base-rev", default=None, metavar="REV",
                   help="tracing part: also run the receiver as of this git revision (the before of an A/B)")
    a = p.parse_args(argv)
    a.duration = a.duration or (4.0 if a.quick else 10.0)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.warmup = 1.0 if a.quick else 2.0
    a.rss_total = 50_000 if a.quick else 200_000
    a.drain_n = 2000 if a.quick else 5000
    a.gateway_n = 600 if a.quick else 1500
    a.drain_repeats = 1 if a.quick else 3
    a.breakdown_repeats = 1 if a.quick else 2
    a.breakdown_duration = 3.0 if a.quick else 6.0
    a.edge_repeats = 2 if a.quick else 6
    a.scale_repeats = 1 if a.quick else 2
    a.gateway_repeats = 1 if a.quick else 2
    a.tracing_repeats = 2 if a.quick else 3
    a.tracing_duration = 3.0 if a.quick else 5.0
    a.limits_repeats = 2 if a.quick else 4
    parts = set(a.only.split(","))
    if a.profile:
        parts.add("profile")
    a.parts = parts
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for tool in ("wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y wrk util-linux redis-server")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: the process under test on core 0, the load on core 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join([".venv/bin/python -m bench",
            *(argv if argv is not None else sys.argv[1:])]), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "load_start": loadavg(),
            "cpu_model": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                               if ln.startswith("model name")), "?"),
            "redis": subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip(),
            "wrk": subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.splitlines()[0:1],
            "git": subprocess.run([GIT, "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip(),
            "git_dirty": subprocess.run([GIT, "-C", str(ROOT), "status", "--short", "--untracked-files=no"],
                                        capture_output=True, text=True).stdout.split("\n"),
            "aof": args.aof, "connections": args.connections, "duration_s": args.duration,
            "repeats": args.repeats}
    log(f"results in {out}; load {meta['load_start']}")
    summary: dict[str, Any] = {"meta": meta}
    rd = RedisProc(out / "redis", aof=args.aof)
    rd.start()
    t0 = time.monotonic()
    try:
        if "ingest" in args.parts:
            summary["ingest"] = bench_ingest(rd, out, args)
        if "breakdown" in args.parts:
            summary["breakdown"] = bench_breakdown(rd, out, args)
        if "floor" in args.parts:
            summary["floor"] = bench_breakdown(rd, out, args, FLOOR)
        if "edge" in args.parts:
            summary["edge"] = bench_edge(rd, out, args)
        if "profile" in args.parts:
            summary["profile"] = bench_profile(rd, out, args)
        if "rss" in args.parts:
            summary["rss"] = bench_rss(rd, out, args)
        if "drain" in args.parts:
            summary["drain"] = bench_drain(rd, out, args)
        if "tracing" in args.parts:
            from bench.tracing import bench_tracing

            summary["tracing"] = bench_tracing(rd, out, args)
        if "limits" in args.parts:
            summary["limits"] = bench_limits(rd, out, args)
    finally:
        rd.stop()
        shutil.rmtree(out / "redis", ignore_errors=True)
    meta["load_end"] = loadavg()
    meta["elapsed_s"] = time.monotonic() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary)
    log(f"done in {meta['elapsed_s']:.0f} s; summary in {out / 'summary.json'}")


def print_summary(s: dict[str, Any]) -> None:
    m = s["meta"]
    print(f"\n== runinfra-webhooks bench, {m['date']}, {m['cpu_model']}, {m['cpus']} cpus")
    print(f"   load at start {m['load_start']}, at end {m['load_end']}; {m['command']}")
    if "ingest" in s:
        i = s["ingest"]
        for kind in ("bare", "receiver"):
            k = i[kind]
            print(f"   {kind:9s} {k['rps']:8.0f} req/s  p50 {k['p50_ms']:6.2f} ms  p99 {k['p99_ms']:6.2f} ms  "
                  f"errors {k['errors']}  peak RSS {k['peak_rss_mib']:.1f} MiB  cpu/req {k['cpu_us_per_req']:.0f} us")
        print(f"   ingest/bare req/s ratio {i['ratio_rps']:.2f} (target >= 0.5); p99 ratio {i['ratio_p99']:.2f} "
              f"(target <= 3)")
        rv = i["receiver"]
        print(f"   per accepted event: {rv['redis_calls_per_accepted']:.2f} Redis calls (EVALSHA), "
              f"{rv['redis_reads_per_event']:.3f} socket reads by Redis (~round trips), Redis CPU "
              f"{rv['redis_cpu_us_per_event']:.0f} us (EVALSHA {rv['redis_evalsha_usec_per_call']:.0f} us)")
    if "breakdown" in s:
        print("   server CPU per request with parts switched off (medians):")
        for kind, v in s["breakdown"].items():
            print(f"     {kind:26s} {v['cpu_us_per_req']:5.0f} us  ({v['rps']:.0f} req/s)")
    if "floor" in s:
        bare = s["floor"]["bare"]["rps"]
        print("   the floor (bench/floor_app.py: plain ASGI, hand checks, no pydantic/metrics), medians:")
        for kind, v in s["floor"].items():
            print(f"     {kind:26s} {v['cpu_us_per_req']:5.0f} us  ({v['rps']:.0f} req/s, "
                  f"{v['rps'] / bare:.2f} x bare)")
    if "edge" in s:
        e = s["edge"]
        print(f"   HTTP protocol, stock httptools {e['stock']['cpu_us_per_req']:.0f} us/req "
              f"({e['stock']['rps']:.0f} req/s) vs bounded {e['bounded']['cpu_us_per_req']:.0f} us/req "
              f"({e['bounded']['rps']:.0f} req/s): CPU ratio {e['ratio_cpu_per_req']:.3f}, req/s ratio "
              f"{e['ratio_rps']:.3f}; EVALSHA {e['redis_evalsha_usec_per_call']:.0f} us/call")
    if "profile" in s:
        print("   profile (inclusive % of samples):")
        for name, pct in s["profile"]["table"]:
            print(f"     {pct:5.1f}%  {name}")
    if "rss" in s:
        r = s["rss"]
        marks = ", ".join(f"{k}: {v['rss_mib']:.1f} MiB" for k, v in r["marks"].items())
        print(f"   receiver RSS {marks}; growth {r['growth'] * 100:.1f}% (target <= 20%); errors {r['errors']}")
        print(f"   Redis after {r['ingested']} queued deliveries: {r['redis_used_memory_mib']:.0f} MiB = "
              f"{r['redis_bytes_per_queued_event']:.0f} bytes per event")
    if "drain" in s:
        d = s["drain"]
        print(f"   drain deployment events {d['real_rate']:.0f}/s vs arq no-op {d['noop_rate']:.0f}/s: ratio "
              f"{d['ratio_real_noop']:.2f} (target >= 0.8)")
        print(f"   per job: worker CPU {d['real_cpu_us_per_job']:.0f} us vs no-op {d['noop_cpu_us_per_job']:.0f} us; "
              "Redis commands (incl. inside scripts) "
              f"{d['real_redis_calls_per_event']:.1f} vs {d['noop_redis_calls_per_event']:.1f}; Redis CPU "
              f"{d['real_redis_cpu_us_per_event']:.0f} us vs {d['noop_redis_cpu_us_per_event']:.0f} us")
        print(f"   gateway-bound {d['gateway_rate']:.0f}/s vs {d['concurrency']}/{d['latency_s']} = "
              f"{d['gateway_ceiling']:.0f}/s: ratio {d['gateway_ratio']:.2f} (target >= 0.8); effective concurrency "
              f"{d['gateway_effective_concurrency']:.1f}; worker CPU {d['gateway_worker_cpu_ms_per_job']:.1f} ms/job, "
              f"emulator CPU {d['gateway_stub_cpu_ms_per_call']:.1f} ms/call, answering in "
              f"{d['gateway_emulator_answer_ms']:.1f} ms")
        print(f"   2 workers vs 1: deployment {d['scale_real_2_over_1']:.2f}x, no-op {d['scale_noop_2_over_1']:.2f}x, "
              f"gateway {(d['gateway2_rate'] or 0) / max(d['gateway_rate'], 1e-9):.2f}x")
        print(f"   Redis bytes per event: queued {d['bytes_per_event_queued']:.0f}, after processing "
              f"{d['bytes_per_event_processed']:.0f}; breakdown {d['memory_breakdown']}")
    if "tracing" in s:
        from bench.tracing import print_tracing

        print_tracing(s["tracing"])

    if "limits" in s:
        li = s["limits"]
        print(f"   gateway-bound with limits above the load {li['on_rate']:.0f}/s vs without {li['off_rate']:.0f}/s: "
              f"ratio {li['ratio_on_off']:.2f}; {li['on_ratio_to_ceiling']:.2f} x the ceiling "
              f"{li['ceiling']:.0f}/s (target >= 0.8); worker CPU {li['on_cpu_ms_per_job']:.2f} vs "
              f"{li['off_cpu_ms_per_job']:.2f} ms/job; Redis commands {li['on_redis_calls_per_event']:.1f} vs "
              f"{li['off_redis_calls_per_event']:.1f}, Redis CPU {li['on_redis_cpu_us_per_event']:.0f} vs "
              f"{li['off_redis_cpu_us_per_event']:.0f} us per event; emulator answering in "
              f"{li['emulator_answer_ms']:.1f} ms")


if __name__ == "__main__":
    main()
