"""The console script ``runinfra-webhooks``: each command is a thin call into the modules that do the work.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage (argparse's own, and a bad setting).
Output meant for programs is JSON on stdout; messages and progress for people go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from runinfra_webhooks.handlers.registry import HandlerLoadError, Registry, load_registry
from runinfra_webhooks.service.settings import (
    ConfigError,
    ConsoleSettings,
    ReceiverSettings,
    StoreSettings,
    WorkerSettings,
    load_settings,
)

__all__ = ["main"]

DEFAULT_SEND_URL = "http://127.0.0.1:8000/webhooks/runinfra"
EVENT_TYPES = (
    "deployment.created", "deployment.ready", "deployment.updated", "deployment.failed", "deployment.deleted",
    "transcription.completed",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runinfra-webhooks", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the receiver (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=_positive, default=1, metavar="N",
                       help="receiver processes sharing the port (default 1); each has its own Redis connections")

    worker = sub.add_parser("worker", help="run the arq worker")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve Prometheus metrics at http://HOST:P/metrics")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST")

    dev = sub.add_parser("dev", help="receiver + worker + gateway emulator (+ its own Redis) in one command")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--stub-port", type=int, default=8090)
    dev.add_argument("--console-port", type=int, default=8001)
    dev.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")

    console = sub.add_parser("console", help="the operations console (web pages and JSON API) on its own port")
    console.add_argument("--host", default="127.0.0.1")
    console.add_argument("--port", type=int, default=8001)
    console.add_argument("--reindex", action="store_true",
                         help="index every stored record at start-up (automatic when no index exists yet)")

    stub = sub.add_parser("gateway-stub", help="the local OpenAI-compatible gateway emulator")
    stub.add_argument("--host", default="127.0.0.1")
    stub.add_argument("--port", type=int, default=8090)
    stub.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    stub.add_argument("--api-key", default=None, help="bearer key to require (default: RUNINFRA_API_KEY or none)")
    stub.add_argument("--dimensions", type=int, default=8, help="length of every embedding (default 8)")

    send = sub.add_parser("send", help="sign an example event of TYPE with the configured secret and POST it")
    send.add_argument("type", choices=EVENT_TYPES, metavar="TYPE")
    send.add_argument("--url", default=None,
                      help=f"receiver URL (default: the running dev's, else {DEFAULT_SEND_URL})")
    send.add_argument("--data", default=None, help="JSON object merged into the example's data")
    send.add_argument("--id", default=None, help="event id (default: a new unique one)")

    events = sub.add_parser("events", help="processing state of events")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    show = events_sub.add_parser("show", help="processing state of one event as JSON")
    show.add_argument("event_id", metavar="ID")

    deployments = sub.add_parser("deployments", help="the deployment registry")
    deployments.add_argument("--json", action="store_true")

    corpus = sub.add_parser("corpus", help="corpus collections for re-embedding")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    load = corpus_sub.add_parser("load", help='load JSON lines {"id","text"} into a collection bound to a model')
    load.add_argument("file", metavar="FILE")
    load.add_argument("--collection", required=True)
    load.add_argument("--model", required=True)
    export = corpus_sub.add_parser("export", help='JSON lines {"id","model","revision","embedding"}')
    export.add_argument("--collection", required=True)
    search = corpus_sub.add_parser("search", help='JSON lines {"id","score"} nearest TEXT, nearest first')
    search.add_argument("text", metavar="TEXT")
    search.add_argument("--collection", required=True)
    search.add_argument("-k", type=int, default=5, help="how many documents (default 5)")

    dead = sub.add_parser("dead-letter", help="parked events")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, metavar="SUBCOMMAND")
    dead_list = dead_sub.add_parser("list", help="parked events with reasons")
    dead_list.add_argument("--json", action="store_true")

    replay = sub.add_parser("replay", help="re-queue dead-lettered events with a new key generation")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("event_id", nargs="?", metavar="ID")
    which.add_argument("--all-dead-lettered", action="store_true")

    handlers = sub.add_parser("handlers", help="every registered handler by type, with where it came from")
    handlers.add_argument("--json", action="store_true")

    for name, verb in (("pause", "pause"), ("resume", "resume")):
        cmd = sub.add_parser(name, help=f"{verb} processing of one event type, or of all (--all)")
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument("type", nargs="?", metavar="TYPE")
        target.add_argument("--all", action="store_true", dest="all_types")

    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    audit_export = audit_sub.add_parser("export", help="write the log out as JSON lines")
    audit_export.add_argument("--out", default=None, metavar="FILE")
    audit_verify = audit_sub.add_parser("verify", help="re-verify signatures and the chain; exit 1 on a bad entry")
    audit_verify.add_argument("--file", default=None, help="verify an exported file instead of Redis")
    audit_verify.add_argument("--anchor", default=None, metavar="HASH",
                              help="a head hash exported earlier that the chain must still contain")
    audit_verify.add_argument("--archive", default=None, metavar="DIR",
                              help="also verify the archives written before trims (audit-*.jsonl in DIR) and "
                                   "that Redis's base is the last archived entry")
    return p


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except (ConfigError, HandlerLoadError) as exc:
        print(f"runinfra-webhooks: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _dev_defaults() -> tuple[dict[str, str], str | None]:
    """What a running ``dev`` in this directory supplies: missing settings, and its receiver URL."""
    from runinfra_webhooks.service.devtools.session import find_running_dev

    session = find_running_dev()
    if session is None:
        return {}, None
    found = session.defaults()
    if found:
        print(f"runinfra-webhooks: using the running dev (pid {session.pid}) for {', '.join(sorted(found))}",
              file=sys.stderr)
    return found, session.receiver_url


def _registry(settings: StoreSettings) -> Registry:
    return load_registry(builtin=settings.builtin_reactions, modules=settings.handler_modules)


def _dispatch(args: argparse.Namespace) -> int:
    # Imported late: keeps `--help` and bad usage fast.
    from runinfra_webhooks.service.cli import commands
    from runinfra_webhooks.service.devtools import dev

    if args.command == "gateway-stub":
        from runinfra_webhooks.service.devtools.gateway_stub import run_stub

        run_stub(args.host, args.port, api_key=args.api_key or os.environ.get("RUNINFRA_API_KEY"),
                 latency=args.latency, dimensions=args.dimensions)
        return 0
    if args.command == "dev":
        return dev.run_dev(port=args.port, stub_port=args.stub_port, redis_url=args.redis_url,
                           console_port=args.console_port)
    if args.command == "serve":
        receiver = load_settings(ReceiverSettings)
        return commands.serve(receiver, _registry(receiver), args.host, args.port, workers=args.workers)
    if args.command == "console":
        return commands.console(load_settings(ConsoleSettings), args.host, args.port, reindex=args.reindex)
    if args.command == "worker":
        worker = load_settings(WorkerSettings)
        return commands.worker(worker, _registry(worker), burst=args.burst, metrics_port=args.metrics_port,
                               metrics_host=args.metrics_host)
    if args.command == "handlers":
        return commands.list_handlers(_registry(load_settings(StoreSettings)), as_json=args.json)

    # A second terminal beside `dev` needs nothing exported: the running dev supplies what is missing.
    dev_settings, dev_url = _dev_defaults()
    if args.command == "send":
        return commands.send(load_settings(ReceiverSettings, **dev_settings), args.type,
                             url=args.url or dev_url or DEFAULT_SEND_URL, data=args.data, event_id=args.id)
    if args.command == "audit":  # verify checks MACs and signatures; export signs its trailer
        audit = load_settings(ReceiverSettings, **dev_settings)
        if args.audit_command == "verify":
            return asyncio.run(commands.audit_verify(audit, args.file, args.anchor, args.archive))
        return asyncio.run(commands.audit_export(audit, args.out))

    if args.command == "corpus" and args.corpus_command == "search":  # embeds the query through the gateway
        search = load_settings(WorkerSettings, **{k: v for k, v in dev_settings.items() if k == "REDIS_URL"})
        return asyncio.run(commands.corpus_search(search, args.text, args.collection, args.k))

    # The rest only read or change stored state: Redis, no secret.
    store = load_settings(StoreSettings, **{k: v for k, v in dev_settings.items() if k == "REDIS_URL"})
    table: dict[tuple[str, str | None], Callable[[], Any]] = {
        ("events", "show"): lambda: commands.events_show(store, args.event_id),
        ("deployments", None): lambda: commands.deployments(store, as_json=args.json),
        ("corpus", "load"): lambda: commands.corpus_load(store, args.file, args.collection, args.model),
        ("corpus", "export"): lambda: commands.corpus_export(store, args.collection),
        ("dead-letter", "list"): lambda: commands.dead_letter_list(store, as_json=args.json),
        ("replay", None): lambda: commands.replay(store, args.event_id, all_dead=args.all_dead_lettered),
        ("pause", None): lambda: commands.pause(store, None if args.all_types else args.type),
        ("resume", None): lambda: commands.resume(store, None if args.all_types else args.type),
    }
    sub_attr = {"events": "events_command", "corpus": "corpus_command", "dead-letter": "dead_command",
                "audit": "audit_command"}.get(args.command)
    sub = getattr(args, sub_attr) if sub_attr else None
    result: int = asyncio.run(table[(args.command, sub)]())
    return result
