"""The console's two speed goals, measured.

    .venv/bin/python -m bench.console            # both parts (~6 minutes on 2 cores)
    .venv/bin/python -m bench.console --quick    # shorter runs, fewer repeats
    .venv/bin/python -m bench.console --only listing

1. ``ingest``: CPU per delivery of the real receiver (its process, pinned to core 0) plus Redis's own CPU per
   delivery, with the console's index block in the ingest script ("after", ``bench.variant_app --variant
   full``: the receiver as shipped) and without it ("before", ``--variant no-index``: the same app and entry
   point, only the script differs), A/B alternated in one run; the figure is the median of the per-pair
   ratios. ``script``: the same two scripts run by an ``Ingestor`` in this process (no HTTP), so Redis's CPU
   per delivery is measured without the receiver's noise.
2. ``listing``: a page of ``GET /api/v1/events`` from a running ``console`` process over 1,000 and over
   1,000,000 retained events (index keys and records filled by a pipelined loader, not through HTTP), for
   the newest page, each filter, a combined filter, an id prefix and a page deep in the history; the two
   Redis instances are measured in alternated rounds. Time = client-side wall time of the whole request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis

from bench.run import PY, ROOT, SERVER_CORE, TASKSET, RedisProc, free_port, ingest_once, loadavg, log, median, stop
from runinfra_webhooks.service.storage import keys
from runinfra_webhooks.service.storage.listing import Cursor

TOKEN = "bench-console-token-0123456789abcdefghij"  # noqa: S105 - the bench's own console
TYPES = ("deployment.created", "deployment.ready", "deployment.updated", "deployment.failed", "deployment.deleted",
         "transcription.completed")
BASE_MS = 1_760_000_000_000


def _state(i: int) -> str:
    r = i % 100
    return "dead_lettered" if r < 5 else "queued" if r < 8 else "ignored" if r < 10 else "succeeded"


def fill(client: sync_redis.Redis, n: int, batch: int = 20_000) -> float:
    """n retained events: a small record each and its entries in the id, type and state indexes."""
    t0 = time.monotonic()
    for start in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        by_time: dict[str, int] = {}
        by_type: dict[str, dict[str, int]] = {t: {} for t in TYPES}
        by_state: dict[str, dict[str, int]] = {}
        for i in range(start, min(start + batch, n)):
            event_id, type_, state, at = f"evt_{i:09d}", TYPES[i % len(TYPES)], _state(i), BASE_MS + i * 7
            pipe.hset(keys.event(event_id), mapping={
                "id": event_id, "type": type_, "created": at // 1000, "state": state, "attempts": 1,
                "generation": 0, "received_ms": at, "updated_ms": at + 5})
            by_time[event_id] = at
            by_type[type_][event_id] = at
            by_state.setdefault(state, {})[event_id] = at
        pipe.zadd(keys.IX_IDS, dict.fromkeys(by_time, 0))
        for type_, members in by_type.items():
            pipe.zadd(keys.ix_type(type_), members)
        for state, members in by_state.items():
            pipe.zadd(keys.ix_state(state), members)
        pipe.sadd(keys.IX_TYPES, *TYPES)
        pipe.execute()
    return time.monotonic() - t0


def queries(n: int) -> dict[str, dict[str, str]]:
    mid = n // 2
    deep = Cursor(BASE_MS + mid * 7, f"evt_{mid:09d}").encode()
    return {
        "newest page": {},
        "state=dead_lettered": {"state": "dead_lettered"},
        "type=deployment.ready": {"type": "deployment.ready"},
        "state+type": {"state": "succeeded", "type": "deployment.ready"},
        "state+type, sparse": {"state": "queued", "type": "deployment.failed"},  # 3 % x 1/6 of the events
        "q=id prefix": {"q": f"evt_{mid // 1000:06d}"},
        "deep cursor": {"cursor": deep},
        "since/until": {"since": str((BASE_MS + mid * 7) // 1000 - 60), "until": str((BASE_MS + mid * 7) // 1000)},
    }


def start_console(redis_url: str, out: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNINFRA_", "REDIS_"))}
    env.update(REDIS_URL=redis_url, RUNINFRA_CONSOLE_TOKEN=TOKEN, RUNINFRA_LOG_LEVEL="warning")
    proc = subprocess.Popen([TASKSET, "-c", SERVER_CORE, PY, "-m", "runinfra_webhooks", "console", "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(out, "ab"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def time_page(client: httpx.Client, url: str, params: dict[str, str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer = client.get(url + "/api/v1/events", params=params)
        times.append((time.perf_counter() - t0) * 1000)
        assert answer.status_code == 200, answer.text
    return times


def bench_listing(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    sizes = (1_000, args.events)
    servers = {n: RedisProc(out / f"redis-{n}", aof=False) for n in sizes}
    consoles: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
    result: dict[str, Any] = {"sizes": sizes, "rounds": args.rounds, "repeats": args.page_repeats}
    try:
        for n, rd in servers.items():
            rd.start()
            took = fill(sync_redis.Redis(host="127.0.0.1", port=rd.port), n)
            result[f"fill_s_{n}"] = took
            result[f"redis_used_memory_mib_{n}"] = rd.used_memory() / 2**20
            log(f"filled {n} events in {took:.1f} s, Redis {rd.used_memory() / 2**20:.0f} MiB")
            consoles[n] = start_console(rd.url, out / f"console-{n}.log")
        samples: dict[tuple[int, str], list[float]] = {}
        items: dict[tuple[int, str], int] = {}
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            for r in range(args.rounds):
                order = sizes if r % 2 == 0 else tuple(reversed(sizes))
                for n in order:
                    url = consoles[n][1]
                    for name, params in queries(n).items():
                        time_page(client, url, params, 5)  # warm the connection and the code path
                        samples.setdefault((n, name), []).extend(time_page(client, url, params, args.page_repeats))
                        items[(n, name)] = len(client.get(url + "/api/v1/events", params=params).json()["items"])
                log(f"listing round {r + 1}/{args.rounds} (load {loadavg()})")
        table = []
        for name in queries(sizes[0]):
            small, big = samples[(sizes[0], name)], samples[(sizes[1], name)]
            row: dict[str, Any] = {"query": name, "items_small": items[(sizes[0], name)],
                                   "items_big": items[(sizes[1], name)],
                                   "median_ms_small": statistics.median(small),
                                   "median_ms_big": statistics.median(big),
                                   "p90_ms_small": statistics.quantiles(small, n=10)[-1],
                                   "p90_ms_big": statistics.quantiles(big, n=10)[-1],
                                   "ratio": statistics.median(big) / statistics.median(small)}
            table.append(row)
            log(f"{name:24s} {sizes[0]}: {row['median_ms_small']:.2f} ms ({row['items_small']} items)  "
                f"{sizes[1]}: {row['median_ms_big']:.2f} ms ({row['items_big']} items)  ratio {row['ratio']:.2f}")
        result["table"] = table
    finally:
        for proc, _ in consoles.values():
            stop(proc)
        for rd in servers.values():
            rd.stop()
    return result


def bench_ingest_overhead(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    rd = RedisProc(out / "redis-ingest", aof=False)
    rd.start()
    runs: list[dict[str, Any]] = []
    try:
        for r in range(args.repeats):
            order = ("variant:no-index", "variant:full") if r % 2 == 0 else ("variant:full", "variant:no-index")
            for kind in order:
                tag = f"ingest-{kind.replace(':', '-')}-{r}"
                res = ingest_once(kind, rd, out, tag, connections=args.connections, duration=args.duration,
                                  warmup=args.warmup, expected_rps=6000)
                res["total_cpu_us"] = res["cpu_us_per_req"] + res["redis_cpu_us_per_event"]
                res["load"] = loadavg()
                runs.append(res)
                log(f"{tag}: {res['rps']:.0f} req/s, receiver {res['cpu_us_per_req']:.0f} us + Redis "
                    f"{res['redis_cpu_us_per_event']:.1f} us CPU per delivery, evalsha "
                    f"{res['redis_evalsha_usec_per_call']:.1f} us/call, errors {res['errors']} (load {res['load']})")
    finally:
        rd.stop()
    before = [r for r in runs if r["kind"] == "variant:no-index"]
    after = [r for r in runs if r["kind"] == "variant:full"]
    pairs = list(zip(before, after, strict=True))
    summary: dict[str, Any] = {"runs": runs}
    for name, rs in (("before", before), ("after", after)):
        summary[name] = {k: median([r[k] for r in rs]) for k in
                         ("rps", "cpu_us_per_req", "redis_cpu_us_per_event", "total_cpu_us",
                          "redis_evalsha_usec_per_call")}
    summary["ratio_total_cpu"] = median([a["total_cpu_us"] / b["total_cpu_us"] for b, a in pairs])
    summary["ratio_receiver_cpu"] = median([a["cpu_us_per_req"] / b["cpu_us_per_req"] for b, a in pairs])
    summary["ratio_redis_cpu"] = median([a["redis_cpu_us_per_event"] / b["redis_cpu_us_per_event"] for b, a in pairs])
    summary["ratio_evalsha_usec"] = median([a["redis_evalsha_usec_per_call"] / b["redis_evalsha_usec_per_call"]
                                            for b, a in pairs])
    log(f"ingest CPU per delivery, after/before (median of {len(pairs)} alternated pairs): total "
        f"{summary['ratio_total_cpu']:.3f}, receiver {summary['ratio_receiver_cpu']:.3f}, Redis "
        f"{summary['ratio_redis_cpu']:.3f}, script {summary['ratio_evalsha_usec']:.3f}")
    return summary


async def _script_run(redis_url: str, script: str, tag: str, n: int) -> float:
    """Redis CPU microseconds per delivery for ``n`` queued deliveries through ``script``."""
    import asyncio

    from redis.asyncio import Redis

    import runinfra_webhooks.service.storage.ingest as ingest_module
    from runinfra_webhooks.service.storage.ingest import Delivery, Ingestor, IngestOutcome

    ingest_module._SCRIPT = script
    client = Redis.from_url(redis_url)
    await client.flushall()
    ingestor = Ingestor(client, dedup_ttl=3600, event_retention=3600, dead_letter_retention=3600, job_expiry_s=3600)
    body = (ROOT / "service" / "devtools" / "examples" / "deployment.ready.json").read_bytes()
    info = sync_redis.Redis.from_url(redis_url)
    before: dict[str, Any] = info.info("cpu")  # type: ignore[assignment]
    now = time.time_ns() // 1_000_000
    for start in range(0, n, 200):
        await asyncio.gather(*(ingestor.ingest(Delivery(
            IngestOutcome.QUEUED, f"evt_{tag}_{i:08d}", "deployment.ready", 1, b"t=1,v1=" + b"a" * 64, body,
            "r" * 32, 0, now + i)) for i in range(start, start + 200)))
    after: dict[str, Any] = info.info("cpu")  # type: ignore[assignment]
    await client.aclose()
    used = (after["used_cpu_user"] + after["used_cpu_sys"]) - (before["used_cpu_user"] + before["used_cpu_sys"])
    return float(used) / n * 1e6


def bench_script(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    import runinfra_webhooks.service.storage.ingest as ingest_module
    from bench.variant_app import without_console_index

    full = ingest_module._SCRIPT
    variants = {"before": without_console_index(full), "after": full}
    rd = RedisProc(out / "redis-script", aof=False)
    rd.start()
    samples: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for r in range(args.repeats):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                samples[name].append(asyncio.run(_script_run(rd.url, variants[name], f"{name}{r}", 20_000)))
    finally:
        ingest_module._SCRIPT = full
        rd.stop()
    ratios = [a / b for b, a in zip(samples["before"], samples["after"], strict=True)]
    result = {"redis_cpu_us_before": median(samples["before"]), "redis_cpu_us_after": median(samples["after"]),
              "samples": samples, "ratio": median(ratios)}
    log(f"script alone: Redis CPU per delivery {result['redis_cpu_us_before']:.1f} -> "
        f"{result['redis_cpu_us_after']:.1f} us (median ratio {result['ratio']:.3f})")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.console")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="script,ingest,listing")
    p.add_argument("--events", type=int, default=1_000_000, help="retained events of the large listing case")
    p.add_argument("--connections", type=int, default=50)
    args = p.parse_args(argv)
    args.repeats = 4 if args.quick else 6
    args.duration, args.warmup = (4.0, 1.5) if args.quick else (8.0, 2.0)
    args.rounds, args.page_repeats = (2, 30) if args.quick else (4, 50)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"console-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv[1:],
                                        "load_start": loadavg(), "cpus": os.cpu_count()}}
    parts = args.only.split(",")
    if "script" in parts:
        summary["script"] = bench_script(out, args)
    if "ingest" in parts:
        summary["ingest"] = bench_ingest_overhead(out, args)
    if "listing" in parts:
        summary["listing"] = bench_listing(out, args)
    summary["meta"]["load_end"] = loadavg()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"summary in {out / 'summary.json'}")


if __name__ == "__main__":
    main()
