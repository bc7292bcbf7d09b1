"""Tracing's cost on the receiver: `python -m bench --only tracing [--base-rev REV]`.

Interleaved runs of the real receiver (`serve`, pinned like the ingest bench) in up to three set-ups, in
alternating order per repeat so drift on the shared machine falls on all of them alike:

* ``base``: the receiver as of ``--base-rev`` (built from ``git archive`` into the results folder and put
  first on PYTHONPATH), i.e. before tracing existed: the A of "tracing off costs nothing";
* ``off``: this tree with no OTEL_* variable (what every deployment without a collector runs);
* ``on``: this tree exporting every delivery's server span over OTLP/HTTP to a sink in this process that
  decodes and counts the spans (so the figure includes the SDK's batching, protobuf encoding and POSTs);
* ``on-10%``: the same with the standard sampler keeping one trace in ten (``parentbased_traceidratio``).

Reported: medians of req/s, server CPU per request and p99, and the per-repeat ratios off/base and on/off.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import run
from bench.run import ROOT, RedisProc, log, median


class _SpanSink:
    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.spans = 0
        self.lock = threading.Lock()


@contextmanager
def span_sink() -> Iterator[_SpanSink]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    holder: dict[str, _SpanSink] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers.get("content-length", "0"))))
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with holder["sink"].lock:
                holder["sink"].spans += n
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["sink"] = _SpanSink(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["sink"]
    finally:
        server.shutdown()
        server.server_close()


def build_base(rev: str, out: Path) -> Path:
    """The package as of ``rev``, installed (no dependencies: they are this venv's) into ``out/base-site``."""
    src, site = out / "base-src", out / "base-site"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run([run.GIT, "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    subprocess.run([run.PY, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(src)],
                   check=True, capture_output=True)
    return site


def bench_tracing(rd: RedisProc, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    setups: dict[str, dict[str, str]] = {}
    if args.base_rev:
        site = build_base(args.base_rev, out)
        setups["base"] = {"PYTHONPATH": f"{site}:{ROOT}"}
    runs: dict[str, list[dict[str, Any]]] = {}
    with span_sink() as sink:
        setups["off"] = {}
        setups["on"] = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        # The standard knob for that cost: keep one trace in ten (an incoming sampled parent still wins).
        setups["on-10%"] = {**setups["on"], "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                            "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        names = list(setups)
        runs = {k: [] for k in names}
        for r in range(args.tracing_repeats):
            for name in names if r % 2 == 0 else list(reversed(names)):
                before = sink.spans
                res = run.ingest_once("receiver", rd, out, f"tracing-{name}-{r}", connections=args.connections,
                                      duration=args.tracing_duration, warmup=args.warmup, expected_rps=6000,
                                      env_extra=setups[name])
                # Spans of the warm-up and the measured run together, over the deliveries of both.
                res["spans_exported"] = sink.spans - before
                runs[name].append(res)
                log(f"tracing-{name}-{r}: {res['rps']:.0f} req/s, {res['cpu_us_per_req']:.0f} us CPU per request, "
                    f"p99 {res['p99_us'] / 1000:.2f} ms, statuses {res['statuses']}, spans {res['spans_exported']}")
    summary: dict[str, Any] = {"base_rev": args.base_rev, "repeats": args.tracing_repeats,
                               "duration_s": args.tracing_duration}
    for name, rs in runs.items():
        summary[name] = {"rps": median([x["rps"] for x in rs]),
                         "cpu_us_per_req": median([x["cpu_us_per_req"] for x in rs]),
                         "p99_ms": median([x["p99_us"] / 1000 for x in rs]),
                         "errors": sum(x["errors"] for x in rs),
                         "spans_exported": sum(x["spans_exported"] for x in rs)}

    def ratio(a: str, b: str, key: str) -> float:
        return median([x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True)])

    if "base" in runs:
        summary["off_over_base_rps"] = ratio("off", "base", "rps")
        summary["off_over_base_cpu"] = ratio("off", "base", "cpu_us_per_req")
    summary["on_over_off_rps"] = ratio("on", "off", "rps")
    summary["on_over_off_cpu"] = ratio("on", "off", "cpu_us_per_req")
    summary["on_over_off_p99"] = ratio("on", "off", "p99_us")
    summary["sampled_over_off_rps"] = ratio("on-10%", "off", "rps")
    summary["sampled_over_off_cpu"] = ratio("on-10%", "off", "cpu_us_per_req")
    return summary


def print_tracing(t: dict[str, Any]) -> None:
    print(f"   tracing ({t['repeats']} interleaved repeats of {t['duration_s']:g} s; medians):")
    for name in ("base", "off", "on", "on-10%"):
        if name in t:
            v = t[name]
            print(f"     {name:6s} {v['rps']:7.0f} req/s  cpu/req {v['cpu_us_per_req']:5.0f} us  "
                  f"p99 {v['p99_ms']:6.2f} ms  errors {v['errors']}  spans exported {v['spans_exported']}")
    if "off_over_base_rps" in t:
        print(f"     off/base ({t['base_rev']}): req/s {t['off_over_base_rps']:.3f}, "
              f"cpu/req {t['off_over_base_cpu']:.3f}")
    print(f"     on/off: req/s {t['on_over_off_rps']:.3f}, cpu/req {t['on_over_off_cpu']:.3f}, "
          f"p99 {t['on_over_off_p99']:.3f}; on-10%/off: req/s {t['sampled_over_off_rps']:.3f}, "
          f"cpu/req {t['sampled_over_off_cpu']:.3f}")
