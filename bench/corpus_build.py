"""Re-embedding builds at growing corpus sizes: is a build's time linear in the corpus?

    .venv/bin/python -m bench.corpus_build                       # 1k, 10k, 100k documents, redis store
    .venv/bin/python -m bench.corpus_build --stores redis,qdrant --sizes 1000,10000
    .venv/bin/python -m bench.corpus_build --dimensions 1024 --sizes 5000   # Redis bytes per real-size vector
    .venv/bin/python -m bench.corpus_build --sizes 100000 --latency 0.05 --concurrency 1,4,8 --skip-old
    .venv/bin/python -m bench.corpus_build --sizes 100000 --latency 0.05 --concurrency 4 --workers 1,2 \
        --repeats 3 --skip-old        # 2 processes sharing each build against 1

Each build runs in a fresh process (pinned to core 0) against the bench's own redis-server and the gateway
emulator at zero latency (both on core 1): the corpus is loaded with ``load_corpus``, then one
``embed_collection`` call does the whole build exactly as a worker's job does (batches of 64, every batch
through the emulator over HTTP, vectors to the store, the flip). Per build it reports the build's wall
time, the time per document, the process's peak RSS, Redis's ``used_memory`` growth per vector, and the
median of three top-5 searches of the finished collection (the store's search: an exact scan in Redis). Next
to it, the step the builds used to repeat: re-cutting every id into batches twice per batch (what the old
``Build.batches`` property cost), timed alone on the same ids.

``--workers 1,2`` shares each build between that many processes: the first does what the event's job does
(``embed_collection``, which waits for every batch and flips); each other one does what a helper job does
(``join_collection``: claim batches under a lease until none is free), started with the first and retried
until the build has flipped. All of them are pinned to the same core, so 2 against 1 shows what sharing buys
with the same CPU when the gateway's latency is the limit. The worker counts alternate within each repeat
(1 2, 1 2, ...); the summary gives each count's median build time and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run import LOAD_CORE, PY, SERVER_CORE, TASKSET, RedisProc, free_port, log, stop, wait_port

BATCH = 64
MODEL = "bench-embed"


# --- the child: one build ------------------------------------------------------------------------
def _settings(redis_url: str, base_url: str, store_url: str, work: Path, concurrency: int) -> Any:
    from runinfra_webhooks.service.settings import load_settings

    return load_settings(RUNINFRA_WEBHOOK_SECRET="whsec_bench",  # noqa: S106 - the bench's own
                         REDIS_URL=redis_url, RUNINFRA_BASE_URL=base_url,
                         RUNINFRA_API_KEY="sk-stub", RUNINFRA_EMBED_BATCH_SIZE=BATCH,
                         RUNINFRA_VECTOR_STORE=store_url, RUNINFRA_ARTIFACTS_DIR=str(work / "artifacts"),
                         RUNINFRA_EMBED_CONCURRENCY=concurrency, RUNINFRA_JOB_TIMEOUT=3600)


async def one_helper(redis_url: str, base_url: str, store_url: str, work: Path, concurrency: int) -> dict[str, Any]:
    """A helper of the build another process runs: join it until it has flipped; how many batches ran here."""
    from redis.asyncio import Redis

    from runinfra_webhooks.handlers.context import HandlerContext
    from runinfra_webhooks.handlers.embeddings import join_collection
    from runinfra_webhooks.service.gateway.client import GatewayClient
    from runinfra_webhooks.service.storage import keys
    from runinfra_webhooks.service.storage.vectors import open_vector_store

    settings = _settings(redis_url, base_url, store_url, work, concurrency)
    redis = Redis.from_url(redis_url)
    gateway = GatewayClient.from_settings(settings)
    ctx = HandlerContext(event_id="evt_bench", settings=settings, redis=redis, gateway=gateway)
    ran = 0
    async with open_vector_store(store_url, redis) as store:
        while await redis.hget(keys.corpus_meta("bench"), "revision") != b"rev_bench":
            ran += max(0, await join_collection(ctx, store, "bench", "rev_bench"))
            await asyncio.sleep(0.02)
    await gateway.aclose()
    await redis.aclose()
    return {"batches_here": ran}


async def one_build(redis_url: str, base_url: str, store_url: str, n: int, work: Path,
                    concurrency: int) -> dict[str, Any]:
    from redis.asyncio import Redis

    from runinfra_webhooks.handlers.context import HandlerContext
    from runinfra_webhooks.handlers.corpus import active_slot, load_corpus
    from runinfra_webhooks.handlers.embeddings import embed_collection
    from runinfra_webhooks.service.gateway.client import GatewayClient
    from runinfra_webhooks.service.storage.vectors import open_vector_store

    settings = _settings(redis_url, base_url, store_url, work, concurrency)
    redis = Redis.from_url(redis_url)
    lines = [json.dumps({"id": f"doc-{i:07d}", "text": f"document {i} of the bench corpus, about topic {i % 97}"})
             for i in range(n)]
    started = time.perf_counter()
    await load_corpus(redis, lines, collection="bench", model=MODEL)
    load_s = time.perf_counter() - started
    del lines
    before = int((await redis.info("memory"))["used_memory"])
    gateway = GatewayClient.from_settings(settings)

    ctx = HandlerContext(event_id="evt_bench", settings=settings, redis=redis, gateway=gateway)
    started = time.perf_counter()
    async with open_vector_store(store_url, redis) as store:
        flipped = await embed_collection(ctx, store, "bench", model=MODEL, revision="rev_bench", created=1)
        build_s = time.perf_counter() - started
        after = int((await redis.info("memory"))["used_memory"])
        slot = await active_slot(redis, "bench")
        assert slot is not None
        query = (await store.vectors(slot, ["doc-0000000"]))[0]
        assert query is not None
        timings = []
        for _ in range(3):
            t = time.perf_counter()
            hits = await store.search(slot, query, 5)
            timings.append(time.perf_counter() - t)
        assert hits[0].id == "doc-0000000"
    await gateway.aclose()
    await redis.aclose()
    return {"n": n, "flipped": flipped, "load_s": load_s, "build_s": build_s, "us_per_doc": build_s / n * 1e6,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "redis_bytes_per_vector": (after - before) / n, "search_ms": sorted(timings)[1] * 1000}


# --- the step builds used to repeat ----------------------------------------------------------------
def old_resplit_s(n: int) -> float:
    """Seconds the old ``Build.batches`` spent per build: every id re-cut into batches, twice per batch."""
    from runinfra_webhooks.handlers.corpus import split_batches

    ids = tuple(f"doc-{i:07d}" for i in range(n))
    started = time.perf_counter()
    for index in range(-(-n // BATCH)):
        for _ in range(2):  # batch_texts and commit_batch each read build.batches[index]
            split_batches(ids, BATCH)[index]
    return time.perf_counter() - started


# --- the parent ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"dimensions": args.dimensions, "batch": BATCH, "latency": args.latency,
                               "builds": [], "old_resplit": [], "shared": []}
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        work = Path(tmp)
        rd = RedisProc(work / "redis", aof=False)
        rd.start()
        port = free_port()
        stub = subprocess.Popen(
            [TASKSET, "-c", LOAD_CORE, PY, "-m", "runinfra_webhooks", "gateway-stub", "--port", str(port),
             "--api-key", "sk-stub", "--dimensions", str(args.dimensions), "--latency", str(args.latency)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, stub)
            root = f"http://127.0.0.1:{port}"
            # Repeats outermost, so the concurrency settings of one size alternate (A B, A B) under the same load.
            plan = [(store, n, lanes, workers, repeat) for repeat in range(args.repeats)
                    for store in args.stores.split(",") for n in map(int, args.sizes.split(","))
                    for lanes in map(int, args.concurrency.split(",")) for workers in map(int, args.workers.split(","))]
            for store, n, lanes, workers, repeat in plan:
                rd.client().flushall()
                httpx.post(f"{root}/_stub/reset", timeout=10).raise_for_status()
                store_url = "redis" if store == "redis" else f"qdrant+path://{work / f'qdrant-{n}-{repeat}'}"
                common = ["--redis-url", rd.url, "--base-url", f"{root}/v1", "--store-url", store_url,
                          "--work", str(work), "--lanes", str(lanes)]
                # Files, not pipes: a helper's log lines would fill a pipe nobody reads until it ends.
                outputs = [work / f"helper-{k}.out" for k in range(workers - 1)]
                helpers = [subprocess.Popen([TASKSET, "-c", SERVER_CORE, PY, "-m", "bench.corpus_build", "--helper",
                                             *common], stdout=path.open("w"), stderr=subprocess.STDOUT)
                           for path in outputs]
                out = subprocess.run(
                    [TASKSET, "-c", SERVER_CORE, PY, "-m", "bench.corpus_build", "--child", str(n), *common],
                    capture_output=True, text=True, check=False, timeout=3600)
                codes = [h.wait(timeout=600) for h in helpers]
                helped = [path.read_text() for path in outputs]
                if out.returncode or any(codes):
                    errors = out.stderr[-3000:] + "".join(text[-3000:] for text in helped)
                    raise RuntimeError(f"the build of {n} in {store} failed:\n{errors}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                charged = httpx.get(f"{root}/_stub/charges", timeout=10).json()["total"]
                row.update(store=store, repeat=repeat, charged_batches=charged, concurrency=lanes, workers=workers,
                           helper_batches=[json.loads(t.strip().splitlines()[-1])["batches_here"] for t in helped],
                           batches=-(-n // BATCH))
                results["builds"].append(row)
                log(f"{store} n={n} concurrency={lanes} workers={workers}: build {row['build_s']:.2f} s "
                    f"({row['us_per_doc']:.0f} us/doc), "
                    f"peak RSS {row['peak_rss_mib']:.1f} MiB, "
                    f"Redis {row['redis_bytes_per_vector']:.0f} B/vector, search {row['search_ms']:.1f} ms")
            results["shared"] = shared_summary(results["builds"])
            for line in results["shared"]:
                log(f"shared: {line}")
            for n in (int(x) for x in args.sizes.split(",") if not args.skip_old):
                seconds = old_resplit_s(n)
                results["old_resplit"].append({"n": n, "seconds": seconds})
                log(f"old re-split at n={n}: {seconds:.2f} s")
        finally:
            stop(stub)
            rd.stop()
    return results


def shared_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per store, size and concurrency: the median build time per worker count, and each against 1 worker."""
    groups: dict[tuple[str, int, int], dict[int, list[float]]] = {}
    for row in rows:
        groups.setdefault((row["store"], row["n"], row["concurrency"]), {}).setdefault(row["workers"], []).append(
            row["build_s"])
    out = []
    for (store, n, lanes), by_workers in groups.items():
        medians = {w: statistics.median(times) for w, times in sorted(by_workers.items())}
        base = medians.get(1)
        out.append({"store": store, "n": n, "concurrency": lanes, "median_build_s": medians,
                    "speedup_vs_1": {w: base / m for w, m in medians.items()} if base else {}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus_build")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--stores", default="redis", help="comma-separated: redis, qdrant (embedded mode)")
    parser.add_argument("--dimensions", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the emulator takes per call")
    parser.add_argument("--concurrency", default="1", help="comma-separated RUNINFRA_EMBED_CONCURRENCY values")
    parser.add_argument("--workers", default="1", help="comma-separated: processes sharing each build")
    parser.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-old", action="store_true", help="do not time the old re-split")
    parser.add_argument("--lanes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper:
        print(json.dumps(asyncio.run(one_helper(args.redis_url, args.base_url, args.store_url, Path(args.work),
                                                args.lanes))), flush=True)
        return
    if args.child:
        row = asyncio.run(one_build(args.redis_url, args.base_url, args.store_url, args.child, Path(args.work),
                                    args.lanes))
        print(json.dumps(row), flush=True)
        return
    results = run(args)
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
