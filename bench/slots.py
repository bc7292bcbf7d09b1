"""Where a gateway-bound worker slot's time goes: the drain of ``python -m bench --only drain`` with each job's
steps timed inside the worker (``bench.probes``).

    .venv/bin/python -m bench.slots                         # 3 runs of 1,500 events, audio on the results disk
    .venv/bin/python -m bench.slots --artifacts-dir /dev/shm/bench   # the audio on a tmpfs: no disk fsyncs
    .venv/bin/python -m bench.slots --limits                # with limits configured above the load

A slot's cycle is split into: the wait from a slot freed to the next job in it (``refill``), arq's own start of
the job (``arq start``: reading the job, its try counter), our part before the gateway call (``before call``:
the start script, the handler up to the request, the flow-control check), the HTTP call, our part after it
(``after call``: the request id recorded, the audio written, the success script), and arq's end of the job
(``arq finish``). Means are what add up to the rate: 50 slots / mean cycle.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.run import LIMITS_ABOVE_LOAD, ROOT, SECRET, RedisProc, gateway_drain, gateway_stub, log, median
from runinfra_webhooks.service.settings import load_settings

__all__ = ["main", "segments"]

STEPS = ("refill", "arq start", "before call", "call", "after call", "arq finish")


def segments(records: list[list[float | None]], slots: int) -> dict[str, dict[str, float]]:
    """Medians and means (ms) of each step over the jobs that made a gateway call."""
    jobs = [r for r in records if all(v is not None for v in r)]
    starts = sorted(float(r[0]) for r in records if r[0] is not None)
    ends = sorted(float(r[5]) for r in records if r[5] is not None)
    # The k-th job to start took the slot the (k - slots)-th job to end gave back.
    refill = [starts[k] - ends[k - slots] for k in range(slots, len(starts))]
    parts: dict[str, list[float]] = {"refill": refill}
    for name, (a, b) in zip(STEPS[1:], ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)), strict=True):
        parts[name] = [float(r[b]) - float(r[a]) for r in jobs]  # type: ignore[arg-type]
    return {name: {"median_ms": statistics.median(v) * 1000, "mean_ms": statistics.fmean(v) * 1000}
            for name, v in parts.items() if v}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.slots", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1500, help="events per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.2, help="gateway emulator latency, seconds")
    p.add_argument("--limits", action="store_true", help="configure limits far above the load")
    p.add_argument("--artifacts-dir", type=Path, default=None, metavar="DIR",
                   help="where the audio files go (default: the results directory)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    slots = load_settings(RUNINFRA_WEBHOOK_SECRET=SECRET).worker_concurrency
    out = ROOT / "bench" / "results" / f"slots-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    rd = RedisProc(out / "redis", aof=False)
    rd.start()
    runs: list[dict[str, Any]] = []
    try:
        with gateway_stub(out, args.latency) as (base_url, _):
            for r in range(args.repeats):
                timeline = out / f"timeline-{r}.json"
                extra = {"BENCH_TIMELINE": str(timeline), **(LIMITS_ABOVE_LOAD if args.limits else {})}
                res = gateway_drain(rd, out, f"slots-{r}", args.n, 1, base_url, args.artifacts_dir, extra)
                res["segments"] = segments(json.loads(timeline.read_text()), slots)
                runs.append(res)
                log(f"run {r}: {res['rate']:.0f}/s; " + "; ".join(
                    f"{k} {v['median_ms']:.1f}/{v['mean_ms']:.1f}" for k, v in res["segments"].items()))
    finally:
        rd.stop()
    summary = {"n": args.n, "slots": slots, "latency_s": args.latency, "limits": args.limits,
               "artifacts_dir": str(args.artifacts_dir or out), "runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n== slot cycle, {args.repeats} runs of {args.n} events, {slots} slots, gateway latency {args.latency} s"
          f"{', limits above the load' if args.limits else ''}; audio in {summary['artifacts_dir']}")
    rates = ", ".join(f"{x['rate']:.0f}" for x in runs)
    print(f"   rate {median([x['rate'] for x in runs]):.0f}/s (runs {rates}); "
          f"emulator answering in {median([x['emulator_answer_ms'] for x in runs]):.1f} ms")
    cycle = 0.0
    for step in STEPS:
        med = median([x["segments"][step]["median_ms"] for x in runs])
        mean = median([x["segments"][step]["mean_ms"] for x in runs])
        cycle += mean
        print(f"   {step:12s} median {med:6.1f} ms   mean {mean:6.1f} ms")
    print(f"   mean cycle {cycle:.1f} ms: {slots} slots / cycle = {slots / cycle * 1000:.0f}/s")
    shutil.rmtree(out / "redis", ignore_errors=True)


if __name__ == "__main__":
    main()
