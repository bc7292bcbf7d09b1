"""Latency under an open-loop load: the receiver and the bare endpoint at 25 %, 50 % and 75 % of the receiver's
own maximum rate, p50 / p99 / p99.9 measured from each request's scheduled send time.

    .venv/bin/python -m bench.openloop            # ~6 minutes: 3 repeats of 10 s per load and server
    .venv/bin/python -m bench.openloop --quick    # ~1-2 minutes: 1 repeat of 5 s

A closed-loop tool (wrk) sends the next request only when the previous answer is in: while the server stalls
the tool stalls with it, and the requests that would have been sent meanwhile are never measured
(coordinated omission). The generator here keeps a fixed schedule instead, request i due at start + i/rate,
whatever the server does, and each latency counts from the time the request was due: a stall of the server
shows up in every request due during it. It is ours because wrk2 is not packaged here (Debian has wrk) and no
maintained PyPI package does constant-rate HTTP with coordinated-omission-free latency for raw keep-alive
POSTs at thousands per second.

The generator (``--generate``, run by the bench on the load core): uvloop with raw asyncio protocols over many
keep-alive connections, the signed deliveries built before the clock starts, one request in flight per
connection (HTTP/1.1 without pipelining). A due request goes out on an idle connection; with none idle it
waits in a queue, its wait counted in its latency (it is the server's slowness). The loop wakes every
millisecond at most (the event loop's timers have that resolution) and sends what is due up to half a tick
ahead, so a send is within +-0.5 ms of its due time unless the generator itself falls behind; sends later
than 1 ms (``late_by_generator``) and the generator's own CPU show when it is the bottleneck.

Placement: the server under test on core 0; the generator and Redis on core 1, like ``python -m bench``.
Results go to bench/results/<timestamp>/summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import resource
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench.cores import machine_busy_s
from bench.run import (
    LOAD_CORE,
    PY,
    ROOT,
    SECRET,
    TASKSET,
    RedisProc,
    example,
    free_port,
    ingest_once,
    loadavg,
    log,
    median,
    proc_cpu_s,
    start_server,
    stop,
)
from runinfra_webhooks.service.core.signature import sign

PATH = "/webhooks/runinfra"
TYPES = ("deployment.created", "deployment.ready", "deployment.updated", "deployment.failed",
         "deployment.deleted", "transcription.completed")
NS = 1_000_000_000
TICK_NS = 1_000_000  # the event loop's timer resolution
EARLY_NS = TICK_NS // 2  # a send may go this much before its due time, so that rounding is symmetric
LATE_NS = 1_000_000  # a send later than this is the generator's fault, counted
LOADS = (0.25, 0.5, 0.75)


# --- pure parts: schedule and statistics (unit-tested) ----------------------------------------------
def due_ns(start_ns: int, i: int, rate: float) -> int:
    """When request i is due: start + i/rate, computed from i (no accumulated rounding)."""
    return start_ns + int(i * NS / rate)


def due_until(start_ns: int, rate: float, now_ns: int, n: int) -> int:
    """How many requests (0..n) are due at ``now_ns`` counting the early window: the first index not yet due."""
    if now_ns + EARLY_NS < start_ns:
        return 0
    k = math.floor((now_ns + EARLY_NS - start_ns) * rate / NS) + 1
    # Guard the float division at the edges: due_ns(k-1) <= now+early < due_ns(k).
    while k > 0 and due_ns(start_ns, k - 1, rate) > now_ns + EARLY_NS:
        k -= 1
    while k < n and due_ns(start_ns, k, rate) <= now_ns + EARLY_NS:
        k += 1
    return min(k, n)


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; the maximum for q = 100."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values) / 100 - 1e-9))  # 99.9 % of 1000 is 999, not 1000
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass(frozen=True, slots=True)
class Timings:
    """Per request (index = schedule position): due, actually sent, answered (0 = never), HTTP status."""

    due: array[int]
    sent: array[int]
    done: array[int]
    status: array[int]
    from_queue: array[int]  # 1 when it waited for a free connection


def summarise(t: Timings, rate: float, late_ns: int = LATE_NS) -> dict[str, Any]:
    """Latencies from the due time (corrected) and from the send (what a closed-loop tool reports), late sends,
    achieved rates. A send before its due time (the early window) counts from the send, a late one from its due
    time: the wait for the generator or for a free connection is part of what the client would have seen."""
    corrected, service = [], []
    late_gen = late_queue = 0
    statuses: dict[str, int] = {}
    n = len(t.due)
    for i in range(n):
        s = t.sent[i]
        if s and s - t.due[i] > late_ns:
            if t.from_queue[i]:
                late_queue += 1
            else:
                late_gen += 1
        d = t.done[i]
        key = str(t.status[i]) if d else "none"
        statuses[key] = statuses.get(key, 0) + 1
        if d:
            corrected.append(d - min(t.due[i], s))
            service.append(d - s)
    corrected.sort()
    service.sort()
    answered = len(corrected)
    done_times = [d for d in t.done if d]
    sent_times = [s for s in t.sent if s]
    span_done = (max(done_times) - t.due[0]) / NS if done_times else float("nan")
    span_sent = (max(sent_times) - t.due[0]) / NS if sent_times else float("nan")

    def ms(xs: list[int], q: float) -> float:
        return percentile(xs, q) / 1e6

    return {
        "rate": rate, "scheduled": n, "sent": len(sent_times), "answered": answered, "statuses": statuses,
        "send_rate": len(sent_times) / span_sent if sent_times else 0.0,
        "achieved_rate": answered / span_done if done_times else 0.0,
        "late_by_generator": late_gen, "late_waiting_for_connection": late_queue,
        "p50_ms": ms(corrected, 50), "p99_ms": ms(corrected, 99), "p999_ms": ms(corrected, 99.9),
        "max_ms": ms(corrected, 100),
        "service_p50_ms": ms(service, 50), "service_p99_ms": ms(service, 99), "service_p999_ms": ms(service, 99.9),
    }


# --- the generator ---------------------------------------------------------------------------------
def build_requests(n: int, prefix: str, host: str) -> list[bytes]:
    """n unique, validly signed deliveries as raw HTTP/1.1 requests (keep-alive)."""
    now = int(time.time())
    templates = {t: example(t) for t in TYPES}
    out = []
    for i in range(n):
        t = TYPES[i % len(TYPES)]
        event = dict(templates[t])
        event["id"] = f"evt_{prefix}_{i:08d}"
        event["created"] = now + i // 1000
        body = json.dumps(event, separators=(",", ":")).encode()
        head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"runinfra-signature: {sign(body, SECRET, now)}\r\nContent-Length: {len(body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


def content_length(head: bytes) -> int:
    """Content-Length of a response head (lower-cased, without its final blank line); 0 when absent."""
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    eol = head.find(b"\r\n", at)
    return int(head[at + 15:eol if eol >= 0 else len(head)])


class Conn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.current = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's own class, not a subclass of it

    def send(self, i: int, now: int) -> None:
        assert self.transport is not None
        self.current = i
        self.gen.t.sent[i] = now
        self.transport.write(self.gen.requests[i])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            status = int(head[9:12])
            closing = b"connection: close" in head
            self.buf = self.buf[end + 4 + length:]
            i, self.current = self.current, -1
            if i >= 0:
                self.gen.answered(self, i, status, closing)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class Generator:
    def __init__(self, requests: list[bytes], rate: float, connections: int) -> None:
        n = len(requests)
        self.requests, self.rate, self.connections = requests, rate, connections
        z = [0] * n
        self.t = Timings(array("q", z), array("q", z), array("q", z), array("h", z), array("b", z))
        self.idle: collections.deque[Conn] = collections.deque()
        self.queue: collections.deque[int] = collections.deque()
        self.pending = n
        self.finished: asyncio.Future[None] | None = None
        self.closing = False
        self.reconnects = self.connect_errors = 0
        self.address = ("127.0.0.1", 0)
        self._tasks: set[asyncio.Task[None]] = set()

    def answered(self, conn: Conn, i: int, status: int, closing: bool) -> None:
        self.t.done[i] = time.monotonic_ns()
        self.t.status[i] = status
        self._settle()
        if not closing:
            self._free(conn)

    def _free(self, conn: Conn) -> None:
        """A connection ready for a request: the oldest one waiting for a connection, else it idles."""
        if self.queue:
            j = self.queue.popleft()
            self.t.from_queue[j] = 1
            conn.send(j, time.monotonic_ns())
        else:
            self.idle.append(conn)

    def lost(self, conn: Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.current >= 0:
            conn.current = -1
            self._settle()
        if not self.closing and self.reconnects < 10 * self.connections:
            # A connection the server closed (an error answer, its keep-alive timeout) is replaced, so the
            # pool keeps its size; its in-flight request, if any, counts as unanswered. Bounded, so that a
            # server refusing every connection does not get a reconnection storm.
            self.reconnects += 1
            self._tasks.add(asyncio.get_running_loop().create_task(self._replace()))

    async def _replace(self) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(lambda: Conn(self), *self.address)
        except OSError:
            self.connect_errors += 1
            return
        self._free(conn)

    def _settle(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def run(self, host: str, port: int, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        self.address = (host, port)
        for _ in range(self.connections):
            _, conn = await loop.create_connection(lambda: Conn(self), host, port)
            self.idle.append(conn)
        n = len(self.requests)
        start = time.monotonic_ns() + 20 * TICK_NS
        for i in range(n):
            self.t.due[i] = due_ns(start, i, self.rate)
        i = 0
        while i < n:
            now = time.monotonic_ns()
            k = due_until(start, self.rate, now, n)
            while i < k:
                if self.idle:
                    self.idle.popleft().send(i, now)
                else:
                    self.queue.append(i)
                i += 1
            if i < n:
                # Never below one tick: uvloop turns a shorter sleep into a busy loop.
                await asyncio.sleep(max(TICK_NS, self.t.due[i] - EARLY_NS - time.monotonic_ns()) / NS)
        # Requests still queued or in flight: wait for them, within the grace (then they count as unanswered).
        if self.pending:
            try:
                await asyncio.wait_for(asyncio.shield(self.finished), grace_s)
            except TimeoutError:
                pass
        self.closing = True
        for conn in list(self.idle):
            if conn.transport is not None:
                conn.transport.close()


def generate(args: argparse.Namespace) -> None:
    import uvloop

    host, _, port_s = args.target.partition(":")
    n = int(args.rate * args.duration)
    requests = build_requests(n, args.prefix, args.target)
    gen = Generator(requests, args.rate, args.connections)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    uvloop.run(gen.run(host, int(port_s), grace_s=args.grace))
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    res = summarise(gen.t, args.rate)
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    res["generator_cpu_share"] = cpu / wall
    res["generator_cpu_us_per_req"] = cpu / max(n, 1) * 1e6
    res["connections"] = args.connections
    res["reconnects"], res["connect_errors"] = gen.reconnects, gen.connect_errors
    print("OPENLOOP_JSON " + json.dumps(res), flush=True)


# --- the bench ---------------------------------------------------------------------------------------
def run_generator(port: int, rate: float, duration: float, prefix: str, connections: int) -> dict[str, Any]:
    cmd = [TASKSET, "-c", LOAD_CORE, PY, "-m", "bench.openloop", "--generate", "--target", f"127.0.0.1:{port}",
           "--rate", f"{rate:.1f}", "--duration", str(duration), "--prefix", prefix, "--connections",
           str(connections)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=duration + 120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in res.stdout.splitlines():
        if line.startswith("OPENLOOP_JSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("OPENLOOP_JSON "))
            return data
    raise RuntimeError(f"the generator printed no result:\n{res.stdout}\n{res.stderr}")


def openloop_once(kind: str, rd: RedisProc, out: Path, tag: str, rate: float, args: argparse.Namespace
                  ) -> dict[str, Any]:
    rd.reset()
    port = free_port()
    proc = start_server(kind, port, rd.url, out / f"{tag}-server.log")
    try:
        run_generator(port, rate, args.warmup, f"{tag}w", args.connections)
        cpu0, busy0, t0 = proc_cpu_s(proc.pid), machine_busy_s(), time.monotonic()
        res = run_generator(port, rate, args.duration, tag, args.connections)
        wall = time.monotonic() - t0
        res["server_cpu_share"] = (proc_cpu_s(proc.pid) - cpu0) / wall
        # Everything else that ran meanwhile, the generator and Redis included (~0.1-0.3 on a quiet machine).
        res["machine_cores_besides_server"] = (machine_busy_s() - busy0) / wall - res["server_cpu_share"]
    finally:
        stop(proc)
    res["kind"], res["tag"], res["load"] = kind, tag, loadavg()
    return res


def fmt(res: dict[str, Any]) -> str:
    return (f"{res['tag']}: {res['achieved_rate']:.0f}/{res['rate']:.0f} req/s p50 {res['p50_ms']:.2f} p99 "
            f"{res['p99_ms']:.2f} p99.9 {res['p999_ms']:.2f} max {res['max_ms']:.1f} ms (from send: p99 "
            f"{res['service_p99_ms']:.2f}); late >1 ms: {res['late_by_generator']} by the generator, "
            f"{res['late_waiting_for_connection']} waiting for a connection; statuses {res['statuses']}; "
            f"server CPU {res['server_cpu_share']:.2f}, generator CPU {res['generator_cpu_share']:.2f} "
            f"({res['generator_cpu_us_per_req']:.0f} us/req), all else "
            f"{res['machine_cores_besides_server']:.2f} "
            f"(load {res['load']})")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"{stamp}-openloop"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_start": loadavg(),
                                        "command": " ".join([".venv/bin/python -m bench.openloop", *sys.argv[1:]]),
                                        "duration_s": args.duration, "repeats": args.repeats,
                                        "connections": args.connections}}
    log(f"results in {out}; load {loadavg()}")
    rd = RedisProc(out / "redis", aof=False)
    rd.start()
    try:
        if args.max_rate:
            max_rate = args.max_rate
            summary["max"] = {"receiver_rps": max_rate, "given": True}
        else:
            maxes = []
            for r in range(args.max_repeats):
                m = ingest_once("receiver", rd, out, f"max-receiver-{r}", connections=50, duration=args.duration,
                                warmup=args.warmup, expected_rps=6000)
                log(f"receiver at saturation (closed-loop wrk, 50 connections): {m['rps']:.0f} req/s, "
                    f"p99 {m['p99_us'] / 1000:.2f} ms (load {loadavg()})")
                maxes.append(m["rps"])
            max_rate = median(maxes)
            summary["max"] = {"receiver_rps": max_rate, "runs": maxes}
        runs: list[dict[str, Any]] = []
        for r in range(args.repeats):
            for load in LOADS:
                rate = load * max_rate
                for kind in ("bare", "receiver") if r % 2 == 0 else ("receiver", "bare"):
                    res = openloop_once(kind, rd, out, f"ol-{kind}-{int(load * 100)}-{r}", rate, args)
                    res["fraction"] = load
                    runs.append(res)
                    log(fmt(res))
    finally:
        rd.stop()
    summary["runs"] = runs
    table = []
    for load in LOADS:
        row: dict[str, Any] = {"fraction": load, "rate": load * max_rate}
        for kind in ("bare", "receiver"):
            rs = [x for x in runs if x["kind"] == kind and x["fraction"] == load]
            row[kind] = {k: median([x[k] for x in rs]) for k in
                         ("achieved_rate", "p50_ms", "p99_ms", "p999_ms", "max_ms", "service_p99_ms",
                          "server_cpu_share", "generator_cpu_share", "machine_cores_besides_server")}
            row[kind]["late_by_generator"] = sum(x["late_by_generator"] for x in rs)
            row[kind]["late_waiting_for_connection"] = sum(x["late_waiting_for_connection"] for x in rs)
            row[kind]["not_202"] = sum(v for x in rs for s, v in x["statuses"].items() if s != "202")
            row[kind]["scheduled"] = sum(x["scheduled"] for x in rs)
        pairs = zip([x for x in runs if x["kind"] == "bare" and x["fraction"] == load],
                    [x for x in runs if x["kind"] == "receiver" and x["fraction"] == load], strict=True)
        row["ratio_p99"] = median([v["p99_ms"] / b["p99_ms"] for b, v in pairs])
        table.append(row)
    summary["table"] = table
    summary["meta"]["load_end"] = loadavg()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    log(f"summary in {out / 'summary.json'}")
    return summary


def print_summary(s: dict[str, Any]) -> None:
    m = s["meta"]
    print(f"\n== open-loop latency, {m['date']}; load at start {m['load_start']}, at end {m['load_end']}")
    print(f"   {m['command']}; {m['repeats']} repeat(s) of {m['duration_s']:g} s, {m['connections']} connections")
    print(f"   receiver's maximum (closed-loop wrk): {s['max']['receiver_rps']:.0f} req/s")
    print("   load  rate/s | server    achieved  p50 ms  p99 ms  p99.9 ms  max ms | late>1ms gen/conn  not-202  "
          "server CPU  gen CPU  all else")
    for row in s["table"]:
        for kind in ("bare", "receiver"):
            k = row[kind]
            print(f"   {row['fraction'] * 100:3.0f}%  {row['rate']:6.0f} | {kind:8s}  {k['achieved_rate']:8.0f}  "
                  f"{k['p50_ms']:6.2f}  {k['p99_ms']:6.2f}  {k['p999_ms']:8.2f}  {k['max_ms']:6.1f} | "
                  f"{k['late_by_generator']:6d}/{k['late_waiting_for_connection']:<6d}  {k['not_202']:7d}  "
                  f"{k['server_cpu_share']:10.2f}  {k['generator_cpu_share']:7.2f}  "
                  f"{k['machine_cores_besides_server']:8.2f}")
        print(f"                 receiver p99 / bare p99 = {row['ratio_p99']:.2f}"
              + ("  (target <= 3 at 50 %)" if row["fraction"] == 0.5 else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.openloop",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 repeat of 5 s per load and server (~1-2 minutes)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured run (10; quick 5)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per load and server (3; quick 1)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the generator")
    p.add_argument("--max-rate", type=float, default=None, help="skip measuring the receiver's maximum; use this")
    # One generator run (what the bench starts on the load core).
    p.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--target", default="127.0.0.1:8000", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=1000.0, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="ol", help=argparse.SUPPRESS)
    p.add_argument("--grace", type=float, default=10.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.generate:
        a.duration = a.duration or 5.0
        return a
    a.duration = a.duration or (5.0 if a.quick else 10.0)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.warmup = 1.0 if a.quick else 2.0
    a.max_repeats = 1 if a.quick else 3
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.generate:
        generate(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
