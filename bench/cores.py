"""`serve --workers 1` against `serve --workers 2` on this 2-core machine: throughput, CPU per request, and who
uses the cores (the workers, Redis, the load generator).

    .venv/bin/python -m bench.cores            # ~3 minutes: 3 alternated repeats of 8 s per configuration
    .venv/bin/python -m bench.cores --quick    # ~1 minute: 1 repeat of 4 s

With two cores, two receiver workers, wrk and Redis cannot each have a core, so the bench does not compare
throughput alone. Redis and wrk (one thread, closed loop, 50 keep-alive connections, saturating) stay pinned on
core 1 in every configuration, and three placements of the receiver are measured, alternated:

* ``1w@0``: one worker on core 0 (the one-process receiver, as ``python -m bench`` measures it);
* ``2w@0``: two workers sharing core 0: the same CPU budget as ``1w@0``, so the difference is what running two
  processes costs (or saves) per request;
* ``2w@01``: two workers free to use both cores: what scaling out buys here, with the workers competing with
  wrk and Redis for core 1.

Each run reports the workers' CPU per request (all worker processes and the parent, from /proc), the cores
busy for the workers, Redis (INFO cpu) and wrk (its rusage), so that what limits a configuration is visible:
when the sum is ~2.0 the machine is full, and the per-request CPU tells how the receiver would scale with
cores of its own. Results go to bench/results/<timestamp>-cores/summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import (
    PY,
    ROOT,
    TASKSET,
    RedisProc,
    free_port,
    loadavg,
    log,
    median,
    parse_wrk,
    proc_cpu_s,
    server_env,
    stop,
    wait_port,
    write_requests,
    wrk_command,
)
from runinfra_webhooks.service.storage import keys

CONFIGS = {"1w@0": (1, "0"), "2w@0": (2, "0"), "2w@01": (2, "0,1")}


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat): the difference over
    a run, less what the measured processes used, is what other work on the machine took."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = proc_cpu_s(pid)
    return out


def start_serve(workers: int, cores: str, port: int, redis_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [TASKSET, "-c", cores, PY, "-m", "runinfra_webhooks", "serve", "--port", str(port), "--workers",
           str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=server_env(redis_url), stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "ab"))
    wait_port(port, proc, timeout=30)
    if workers > 1:  # the port answers once the parent has bound it; wait for the workers to be up
        deadline = time.monotonic() + 30
        while len([c for c in children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
                  ) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.1)
        time.sleep(1.0)  # each worker builds its app after it starts
    return proc


def wrk(url: str, requests_file: Path, connections: int, duration: float) -> tuple[dict[str, Any], float]:
    """One closed-loop wrk run on the load core: its result and its own CPU seconds."""
    cmd = wrk_command(url, requests_file, connections=connections, duration=duration)
    with open(requests_file.with_suffix(".out"), "w+") as out, open(requests_file.with_suffix(".err"), "w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return parse_wrk(out.read(), err.read()), ru.ru_utime + ru.ru_stime


def run_once(config: str, rd: RedisProc, out: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    workers, cores = CONFIGS[config]
    rd.reset()
    n_meas = int(9000 * args.duration * 1.3) + 1000
    warm, meas = out / f"{tag}-warm.req", out / f"{tag}.req"
    write_requests(warm, int(9000 * args.warmup * 1.3) + 500, f"{tag}w")
    write_requests(meas, n_meas, tag)
    port = free_port()
    proc = start_serve(workers, cores, port, rd.url, out / f"{tag}-server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wrk(url, warm, args.connections, args.warmup)
        pids = [proc.pid, *children(proc.pid)]
        cpu0, rc0 = cpu_of(pids), rd.counters()
        audit0 = rd.client().xlen(keys.AUDIT_STREAM)
        t0, busy0 = time.monotonic(), machine_busy_s()
        res, wrk_cpu = wrk(url, meas, args.connections, args.duration)
        wall, busy = time.monotonic() - t0, machine_busy_s() - busy0
        cpu1, rc1 = cpu_of(pids), rd.counters()
        accepted = rd.client().xlen(keys.AUDIT_STREAM) - audit0
    finally:
        proc.send_signal(signal.SIGTERM)
        stop(proc)
        for f in (warm, meas):
            f.unlink(missing_ok=True)
    per_process = {pid: cpu1.get(pid, cpu0[pid]) - cpu0[pid] for pid in cpu0}
    server_cpu = sum(per_process.values())
    errors = (res["err_connect"] + res["err_read"] + res["err_write"] + res["err_timeout"]
              + sum(v for k, v in res["statuses"].items() if k != "202"))
    return {
        "config": config, "tag": tag, "workers": workers, "cores": cores, "rps": res["rps"],
        "p99_ms": res["p99_us"] / 1000, "errors": errors, "accepted": accepted, "requests": res["requests"],
        "server_cpu_us_per_req": server_cpu / max(res["requests"], 1) * 1e6,
        "server_cores": server_cpu / wall, "redis_cores": (rc1["cpu_s"] - rc0["cpu_s"]) / wall,
        "wrk_cores": wrk_cpu / wall, "redis_cpu_us_per_req": (rc1["cpu_s"] - rc0["cpu_s"]) / max(accepted, 1) * 1e6,
        "other_cores": max(0.0, busy - server_cpu - wrk_cpu - (rc1["cpu_s"] - rc0["cpu_s"])) / wall,
        "per_process_cores": sorted((v / wall for v in per_process.values()), reverse=True),
        "load": loadavg(),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"{stamp}-cores"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_start": loadavg(),
            "command": " ".join([".venv/bin/python -m bench.cores", *sys.argv[1:]]), "duration_s": args.duration,
            "repeats": args.repeats, "connections": args.connections}
    log(f"results in {out}; load {loadavg()}")
    rd = RedisProc(out / "redis", aof=False)
    rd.start()
    runs: list[dict[str, Any]] = []
    names = list(CONFIGS)
    try:
        for r in range(args.repeats):
            for config in names if r % 2 == 0 else list(reversed(names)):
                res = run_once(config, rd, out, f"cores-{config.replace('@', '-')}-{r}", args)
                runs.append(res)
                log(f"{res['tag']}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms, server CPU "
                    f"{res['server_cpu_us_per_req']:.0f} us/req; cores busy: server {res['server_cores']:.2f} "
                    f"(per process {', '.join(f'{x:.2f}' for x in res['per_process_cores'])}), Redis "
                    f"{res['redis_cores']:.2f}, wrk {res['wrk_cores']:.2f}, other work {res['other_cores']:.2f}; "
                    f"errors {res['errors']} "
                    f"(load {res['load']})")
    finally:
        rd.stop()
    table = {}
    for config in names:
        rs = [x for x in runs if x["config"] == config]
        table[config] = {k: median([x[k] for x in rs]) for k in
                         ("rps", "p99_ms", "server_cpu_us_per_req", "server_cores", "redis_cores", "wrk_cores",
                          "other_cores", "redis_cpu_us_per_req")}
        table[config]["errors"] = sum(x["errors"] for x in rs)

    def ratio(a: str, b: str, key: str) -> float:
        pairs = zip([x for x in runs if x["config"] == a], [x for x in runs if x["config"] == b], strict=True)
        return median([x[key] / y[key] for x, y in pairs])

    meta["load_end"] = loadavg()
    summary = {"meta": meta, "table": table, "runs": runs,
               "ratio_rps_2w01_over_1w": ratio("2w@01", "1w@0", "rps"),
               "ratio_cpu_per_req_2w01_over_1w": ratio("2w@01", "1w@0", "server_cpu_us_per_req"),
               "ratio_rps_2w0_over_1w": ratio("2w@0", "1w@0", "rps"),
               "ratio_cpu_per_req_2w0_over_1w": ratio("2w@0", "1w@0", "server_cpu_us_per_req")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    log(f"summary in {out / 'summary.json'}")
    return summary


def print_summary(s: dict[str, Any]) -> None:
    m = s["meta"]
    print(f"\n== serve --workers 1 vs 2, {m['date']}; load at start {m['load_start']}, at end {m['load_end']}")
    print(f"   {m['command']}; {m['repeats']} repeat(s) of {m['duration_s']:g} s; wrk -t1 -c{m['connections']} "
          "and Redis on core 1")
    print("   config  req/s   p99 ms  server us/req | cores busy: server  Redis   wrk   total  others | Redis us/req  "
          "errors")
    for config, v in s["table"].items():
        total = v["server_cores"] + v["redis_cores"] + v["wrk_cores"]
        print(f"   {config:6s} {v['rps']:6.0f}  {v['p99_ms']:7.2f}  {v['server_cpu_us_per_req']:13.0f} | "
              f"{v['server_cores']:18.2f}  {v['redis_cores']:5.2f}  {v['wrk_cores']:4.2f}  {total:5.2f}  "
              f"{v['other_cores']:6.2f} | "
              f"{v['redis_cpu_us_per_req']:12.0f}  {v['errors']:6d}")
    print(f"   2 workers on 2 cores / 1 worker: req/s x{s['ratio_rps_2w01_over_1w']:.2f}, server CPU per request "
          f"x{s['ratio_cpu_per_req_2w01_over_1w']:.2f}")
    print(f"   2 workers on 1 core / 1 worker (same CPU budget): req/s x{s['ratio_rps_2w0_over_1w']:.2f}, server CPU "
          f"per request x{s['ratio_cpu_per_req_2w0_over_1w']:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cores", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 repeat of 4 s per configuration (~1 minute)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured run (8; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="alternated repeats (3; quick 1)")
    p.add_argument("--connections", type=int, default=50)
    a = p.parse_args(argv)
    a.duration = a.duration or (4.0 if a.quick else 8.0)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.warmup = 1.0 if a.quick else 2.0
    return a


def main(argv: list[str] | None = None) -> None:
    bench(parse_args(argv))


if __name__ == "__main__":
    main()
