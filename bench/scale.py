"""Costs that grow with the work: dead letters, the sweep, Redis bytes per event, receiver RSS.

    .venv/bin/python -m bench.scale --only deadletters,sweep,memory        # ~6 minutes on 2 cores
    .venv/bin/python -m bench.scale --only rss --rss-total 1000000         # ~6 minutes, run it alone

Each part prints a table: the work size, seconds, peak memory (RSS of the process under test, or Redis's
used_memory), Redis commands and round trips, and the growth against the smallest row. The process under
test runs on core 0, Redis (and wrk) on core 1, as in bench/run.py.

Measuring an older tree: run that tree's interpreter from this directory, e.g.
``../base/.venv/bin/python -m bench.scale --only deadletters,sweep``; the commands run as subprocesses of
the same interpreter, so they are that tree's code (the sweep is called in-process, the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.run import (
    ALL_TYPES,
    ROOT,
    SECRET,
    SERVER_CORE,
    TASKSET,
    RedisProc,
    free_port,
    log,
    parse_wrk,
    prefill,
    proc_status,
    server_env,
    settings_kw,
    start_server,
    stop,
    write_requests,
    wrk_command,
)
from runinfra_webhooks.handlers.registry import Registry
from runinfra_webhooks.service.settings import WorkerSettings, load_settings
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome
from runinfra_webhooks.service.storage.records import Records
from runinfra_webhooks.workers import sweep
from runinfra_webhooks.workers.deps import WorkerDeps

Row = dict[str, Any]
TIME = "/usr/bin/time"  # GNU time, for a command's peak RSS (%M)


def table(title: str, rows: list[Row], columns: list[tuple[str, str, str]]) -> str:
    """Markdown: ``columns`` = (key, header, format spec); a missing or text value is printed as it is."""
    heads = [h for _, h, _ in columns]
    lines = [f"\n{title}\n", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        lines.append("| " + " | ".join(format(r[k], f) if isinstance(r.get(k), int | float) else str(r.get(k, ""))
                                       for k, _, f in columns) + " |")
    return "\n".join(lines)


def with_growth(rows: list[Row], *names: str) -> list[Row]:
    """Adds ``<name>_x``: each row's value over the first row's (the smallest work)."""
    for r in rows:
        for n in names:
            base = rows[0][n]
            r[f"{n}_x"] = f"{r[n] / base:.1f}x" if base else "-"
    return rows


def redis_counts(rd: RedisProc) -> tuple[int, int]:
    """Commands executed (scripts' inner calls included) and socket reads (~ round trips), so far."""
    c = rd.client()
    calls = sum(int(v["calls"]) for v in rd.commandstats().values())
    reads = int(c.info("stats").get("total_reads_processed", 0))
    return calls, reads


def run_measured(cmd: list[str], env: dict[str, str], stdout: Path) -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS KiB, exit code and stderr of one command on core 0.

    The peak comes from /usr/bin/time, not from our own wait4: Linux keeps a process's peak RSS across exec,
    so a child forked from this (large, after a fill) process would report this process's size."""
    peak_file = stdout.with_suffix(".maxrss")
    with stdout.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.run([TASKSET, "-c", SERVER_CORE, TIME, "-f", "%M", "-o", str(peak_file), *cmd], env=env,
                              stdout=out, stderr=subprocess.PIPE, check=False)
        seconds = time.perf_counter() - t0
    peak = int(peak_file.read_text().split()[-1])
    return seconds, peak, proc.returncode, proc.stderr.decode(errors="replace")


# --- dead letters -----------------------------------------------------------------------------------
async def fill_dead_letters(redis_url: str, n: int) -> None:
    """``n`` dead letters through the real ingest script and the transitions a failing worker runs, three
    per millisecond of dead-lettering; arq's queue dropped after, as if the jobs had ended."""
    redis = Redis.from_url(redis_url)
    kw = settings_kw()
    ingestor = Ingestor(redis, **kw)
    records = Records(redis, event_retention=kw["event_retention"], dead_letter_retention=kw["dead_letter_retention"],
                      job_expiry_s=kw["job_expiry_s"])
    first = time.time_ns() // 1_000_000 - n
    from bench.run import make_body

    async def one(i: int) -> None:
        t = ALL_TYPES[i % len(ALL_TYPES)]
        event_id, at = f"evt_dl_{i:08d}", first + i // 3
        outcome = await ingestor.ingest(Delivery(
            wanted=IngestOutcome.QUEUED, event_id=event_id, type=t, created=at // 1000, header=b"",
            body=make_body(t, event_id, at // 1000, i), request_id=f"bench{i}", secret_index=0, received_ms=at))
        assert outcome is IngestOutcome.QUEUED, outcome
        await records.start(event_id, 0, at)
        assert await records.dead_lettered(event_id, 0, at, "gateway_bad_request", "400 from the gateway")

    for start in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    await redis.delete(keys.ARQ_QUEUE)
    await redis.aclose()


def bench_deadletters(rd: RedisProc, out: Path, sizes: list[int], repeats: int = 3) -> dict[str, list[Row]]:
    env = server_env(rd.url)
    cli = [sys.executable, "-m", "runinfra_webhooks"]
    steps = {"list --json": [*cli, "dead-letter", "list", "--json"], "list": [*cli, "dead-letter", "list"],
             "replay --all-dead-lettered": [*cli, "replay", "--all-dead-lettered"]}
    results: dict[str, list[Row]] = {name: [] for name in steps}
    # The console script's own start (imports, connecting) on an empty set: the rows' "work s" leave it out.
    rd.reset()
    startup = sorted(run_measured(steps["list"], env, out / "dl-empty.out")[0] for _ in range(3))[1]
    log(f"dead letters: the CLI's start-up on an empty set: {startup:.2f} s")
    for n in sizes:
        rd.reset()
        t0 = time.monotonic()
        asyncio.run(fill_dead_letters(rd.url, n))
        log(f"dead letters: {n} filled in {time.monotonic() - t0:.1f} s")
        for name, cmd in steps.items():
            calls0, reads0 = redis_counts(rd)
            # A listing only reads: three runs, the median (the machine is shared); a replay runs once.
            runs = [run_measured(cmd, env, out / f"dl-{n}-{name.split()[0]}.out")
                    for _ in range(1 if name.startswith("replay") else repeats)]
            seconds, peak_kib, code, err = sorted(runs)[len(runs) // 2]
            calls1, reads1 = redis_counts(rd)
            calls0, reads0 = calls1 - (calls1 - calls0) // len(runs), reads1 - (reads1 - reads0) // len(runs)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}: {err[-2000:]}")
            if name == "list --json":
                listed = len(json.loads((out / f"dl-{n}-list.out").read_text()))
                assert listed == n, (listed, n)
            progress = sum(line.startswith("replayed ") for line in err.splitlines())
            results[name].append({"n": n, "seconds": seconds, "work_s": max(seconds - startup, 0.001),
                                  "peak_mib": peak_kib / 1024, "commands": calls1 - calls0,
                                  "round_trips": reads1 - reads0, "stderr_lines": len(err.splitlines()),
                                  "progress_lines": progress})
            log(f"dead letters: {name} n={n}: {seconds:.2f} s, peak {peak_kib / 1024:.0f} MiB, "
                f"{calls1 - calls0} commands, {reads1 - reads0} reads")
        assert rd.client().zcard(keys.DEAD_LETTERS) == 0, "replay left dead letters behind"
    for rows in results.values():
        with_growth(rows, "work_s", "peak_mib")
    return results


# --- the sweep --------------------------------------------------------------------------------------
async def fill_in_flight(redis_url: str, n: int, received_ms: int) -> None:
    """``n`` queued events, their arq jobs waiting, received at ``received_ms`` + i (stale for the sweep)."""
    from bench.run import make_body

    redis = Redis.from_url(redis_url)
    ingestor = Ingestor(redis, **settings_kw())

    async def one(i: int) -> None:
        t = ALL_TYPES[i % len(ALL_TYPES)]
        event_id = f"evt_fl_{i:08d}"
        outcome = await ingestor.ingest(Delivery(
            wanted=IngestOutcome.QUEUED, event_id=event_id, type=t, created=1, header=b"",
            body=make_body(t, event_id, 1, i), request_id=f"bench{i}", secret_index=0, received_ms=received_ms + i))
        assert outcome is IngestOutcome.QUEUED, outcome

    for start in range(0, n, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 500))))
    await redis.aclose()


async def _sweep_runs(rd: RedisProc, out: Path, n: int, runs: int) -> list[Row]:
    settings = load_settings(WorkerSettings, RUNINFRA_WEBHOOK_SECRET=SECRET, REDIS_URL=rd.url,
                             RUNINFRA_ARTIFACTS_DIR=str(out / "artifacts"))
    redis = Redis.from_url(rd.url)
    records = Records(redis, event_retention=settings.event_retention,
                      dead_letter_retention=settings.dead_letter_retention, job_expiry_s=settings.lost_deadline)
    deps = WorkerDeps(settings=settings, redis=redis, records=records, gateway=None, registry=Registry())
    # The tree under test may predate the cursor (the sweep then started from the oldest on every run).
    takes_cursor = "cursor" in inspect.signature(sweep.sweep_once).parameters
    cursor = sweep.SweepCursor() if takes_cursor else None  # type: ignore[attr-defined,unused-ignore]
    rows = []
    try:
        for run in range(runs):
            calls0, reads0 = redis_counts(rd)
            t0 = time.perf_counter()
            result = await (sweep.sweep_once(deps, cursor) if takes_cursor  # type: ignore[call-arg,unused-ignore]
                            else sweep.sweep_once(deps))
            seconds = time.perf_counter() - t0
            calls1, reads1 = redis_counts(rd)
            rows.append({"n": n, "run": run + 1, "seconds": seconds, "commands": calls1 - calls0,
                         "round_trips": reads1 - reads0, "examined": result.get("examined", "-"),
                         "requeued": result["requeued"]})
        # Peak Python memory of one more run (traced apart: tracing slows the run down).
        tracemalloc.start()
        await (sweep.sweep_once(deps, cursor) if takes_cursor  # type: ignore[call-arg,unused-ignore]
               else sweep.sweep_once(deps))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        for r in rows:
            r["peak_mib"] = peak / 2**20
    finally:
        await redis.aclose()
    return rows


async def _vanish_newest(redis_url: str, n: int) -> None:
    """The newest in-flight event's job vanishes: how many runs until the sweep re-creates it?"""
    redis = Redis.from_url(redis_url)
    job = keys.job_id(f"evt_fl_{n - 1:08d}", 0)
    await redis.delete(keys.ARQ_JOB + job)
    await redis.zrem(keys.ARQ_QUEUE, job)
    await redis.aclose()


def bench_sweep(rd: RedisProc, out: Path, sizes: list[int], runs: int) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        rd.reset()
        asyncio.run(fill_in_flight(rd.url, n, time.time_ns() // 1_000_000 - 3_600_000 - n))
        asyncio.run(_vanish_newest(rd.url, n))
        measured = asyncio.run(_sweep_runs(rd, out, n, runs))
        found = next((r["run"] for r in measured if r["requeued"]), None)
        first = measured[0]
        row = {"n": n, "seconds": sorted(r["seconds"] for r in measured)[len(measured) // 2],
               "commands": first["commands"], "round_trips": first["round_trips"], "examined": first["examined"],
               "peak_mib": first["peak_mib"], "newest_found_in_run": found if found else f"not in {runs}"}
        rows.append(row)
        log(f"sweep n={n}: {row}")
    return with_growth(rows, "seconds", "commands")


# --- Redis bytes per retained event -----------------------------------------------------------------
def bench_memory(rd: RedisProc, sizes: list[int]) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        rd.reset()
        base = rd.used_memory()
        t0 = time.monotonic()
        asyncio.run(prefill(rd.url, n, "mem", ALL_TYPES, settings_kw()))
        seconds = time.monotonic() - t0
        used = rd.used_memory()
        info = rd.client().info("memory")
        stored = int(rd.client().info("keyspace").get("db0", {}).get("keys", 0))
        rows.append({"n": n, "seconds": seconds, "used_mib": used / 2**20, "bytes_per_event": (used - base) / n,
                     "rss_mib": int(info["used_memory_rss"]) / 2**20, "keys": stored})
        log(f"memory n={n}: {rows[-1]}")
    return with_growth(rows, "seconds", "used_mib")


# --- receiver RSS -----------------------------------------------------------------------------------
def bench_rss(rd: RedisProc, out: Path, total: int, connections: int) -> list[Row]:
    marks = sorted({m for m in (10_000, 30_000, 100_000, 300_000, 1_000_000) if m <= total} | {total})
    rd.reset()
    req_file, done_file = out / "rss.req", out / "rss.done"
    done_file.unlink(missing_ok=True)
    write_requests(req_file, total + 4 * connections, "rss")
    port = free_port()
    # The deliveries are signed when the file is written; a long run outlasts the default 300 s tolerance.
    proc = start_server("receiver", port, rd.url, out / "rss-server.log",
                        {"RUNINFRA_WEBHOOK_TOLERANCE": str(max(300, total // 500))})
    rows: list[Row] = []
    t0 = time.monotonic()
    wrk: subprocess.Popen[str] | None = None
    try:
        cmd = wrk_command(f"http://127.0.0.1:{port}", req_file, connections=connections, duration=7200,
                          limit=total, done_file=done_file)
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        c = rd.client()
        pending = list(marks)
        while pending and wrk.poll() is None:
            finished = done_file.exists()  # read before the count, so the count includes the last answers
            n = c.xlen(keys.AUDIT_STREAM)
            while pending and n >= pending[0]:
                st = proc_status(proc.pid)
                rows.append({"n": pending[0], "seconds": time.monotonic() - t0, "rss_mib": st.get("VmRSS", 0) / 1024,
                             "peak_mib": st.get("VmHWM", 0) / 1024, "redis_mib": rd.used_memory() / 2**20})
                log(f"rss: {rows[-1]}")
                pending.pop(0)
            if finished:
                break
            time.sleep(0.2)
        wrk.send_signal(signal.SIGINT)
        o, e = wrk.communicate(timeout=60)
        (out / "rss.wrk.txt").write_text(o + e)
        res = parse_wrk(o, e)
        log(f"rss: wrk {res['rps']:.0f} req/s, statuses {res['statuses']}")
        if pending:
            raise RuntimeError(f"wrk ended with {pending} not reached: statuses {res['statuses']}")
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        stop(proc)
        req_file.unlink(missing_ok=True)
    return with_growth(rows, "rss_mib")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="deadletters,sweep,memory", help="comma-separated: deadletters,sweep,memory,rss")
    p.add_argument("--dl-sizes", default="1000,10000,100000")
    p.add_argument("--sweep-sizes", default="1000,10000,100000")
    p.add_argument("--sweep-runs", type=int, default=12)
    p.add_argument("--memory-sizes", default="10000,100000,1000000")
    p.add_argument("--rss-total", type=int, default=300_000)
    p.add_argument("--connections", type=int, default=50)
    a = p.parse_args(argv)
    parts = set(a.only.split(","))
    out = ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    log(f"results in {out}; python {sys.executable}")
    rd = RedisProc(out / "redis", aof=False)
    rd.start()
    summary: dict[str, Any] = {"python": sys.executable, "argv": argv if argv is not None else sys.argv[1:]}
    report: list[str] = []
    try:
        if "deadletters" in parts:
            dl = bench_deadletters(rd, out, [int(x) for x in a.dl_sizes.split(",")])
            summary["deadletters"] = dl
            for name, rows in dl.items():
                report.append(table(f"`{name}`", rows, [
                    ("n", "dead letters", ","), ("seconds", "s", ".2f"), ("work_s", "s minus start-up", ".2f"),
                    ("work_s_x", "time growth", ""),
                    ("peak_mib", "peak RSS MiB", ".0f"), ("peak_mib_x", "RSS growth", ""),
                    ("commands", "Redis commands", ","), ("round_trips", "round trips", ","),
                    ("progress_lines", "progress lines", ",")]))
        if "sweep" in parts:
            rows = bench_sweep(rd, out, [int(x) for x in a.sweep_sizes.split(",")], a.sweep_runs)
            summary["sweep"] = rows
            report.append(table("sweep, one run (median of runs)", rows, [
                ("n", "in flight (stale)", ","), ("examined", "examined per run", ""), ("seconds", "s per run", ".3f"),
                ("seconds_x", "time growth", ""), ("commands", "commands per run", ","),
                ("commands_x", "growth", ""), ("round_trips", "round trips per run", ","),
                ("peak_mib", "peak Python MiB", ".1f"), ("newest_found_in_run", "vanished newest job found", "")]))
        if "memory" in parts:
            rows = bench_memory(rd, [int(x) for x in a.memory_sizes.split(",")])
            summary["memory"] = rows
            report.append(table("Redis memory, events queued (retained)", rows, [
                ("n", "events", ","), ("seconds", "prefill s", ".1f"), ("used_mib", "used_memory MiB", ".0f"),
                ("used_mib_x", "growth", ""), ("bytes_per_event", "bytes / event", ",.0f"),
                ("keys", "keys", ",")]))
        if "rss" in parts:
            rows = bench_rss(rd, out, a.rss_total, a.connections)
            summary["rss"] = rows
            report.append(table("receiver RSS while ingesting", rows, [
                ("n", "deliveries", ","), ("seconds", "s since start", ".0f"), ("rss_mib", "RSS MiB", ".1f"),
                ("rss_mib_x", "growth", ""), ("peak_mib", "peak MiB", ".1f"), ("redis_mib", "Redis MiB", ".0f")]))
    finally:
        rd.stop()
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n".join(report))


if __name__ == "__main__":
    main()
