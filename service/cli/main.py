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

from runinfra_webhooks.service.settings import ConfigError, Settings, load_settings

__all__ = ["main"]

EVENT_TYPES = (
    "deployment.created", "deployment.ready", "deployment.updated", "deployment.failed", "deployment.deleted",
    "transcription.completed",
)


def _settings(*, need_secret: bool) -> Settings:
    if need_secret or os.environ.get("RUNINFRA_WEBHOOK_SECRET"):
        return load_settings()
    # Operations on stored state (events, deployments, replay...) need Redis, not the webhook secret.
    return load_settings(RUNINFRA_WEBHOOK_SECRET="not-needed-for-this-command")  # noqa: S106 - a placeholder, never used to verify


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runinfra-webhooks", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the receiver (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    worker = sub.add_parser("worker", help="run the arq worker")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")

    dev = sub.add_parser("dev", help="receiver + worker + gateway emulator (+ its own Redis) in one command")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--stub-port", type=int, default=8090)
    dev.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")

    stub = sub.add_parser("gateway-stub", help="the local OpenAI-compatible gateway emulator")
    stub.add_argument("--host", default="127.0.0.1")
    stub.add_argument("--port", type=int, default=8090)
    stub.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    stub.add_argument("--api-key", default=None, help="bearer key to require (default: RUNINFRA_API_KEY or none)")
    stub.add_argument("--dimensions", type=int, default=8, help="length of every embedding (default 8)")

    send = sub.add_parser("send", help="sign an example event of TYPE with the configured secret and POST it")
    send.add_argument("type", choices=EVENT_TYPES, metavar="TYPE")
    send.add_argument("--url", default="http://127.0.0.1:8000/webhooks/runinfra")
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

    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    audit_export = audit_sub.add_parser("export", help="write the log out as JSON lines")
    audit_export.add_argument("--out", default=None, metavar="FILE")
    audit_verify = audit_sub.add_parser("verify", help="re-verify signatures and the chain; exit 1 on a bad entry")
    audit_verify.add_argument("--file", default=None, help="verify an exported file instead of Redis")
    audit_verify.add_argument("--anchor", default=None, metavar="HASH",
                              help="a head hash exported earlier that the chain must still contain")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
    except ConfigError as exc:
        print(f"runinfra-webhooks: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    from runinfra_webhooks.service.cli import commands as cli_ops
    from runinfra_webhooks.service.devtools import dev  # imported late: keeps `--help` and bad usage fast

    if args.command == "gateway-stub":
        from runinfra_webhooks.service.devtools.gateway_stub import run_stub

        run_stub(args.host, args.port, api_key=args.api_key or os.environ.get("RUNINFRA_API_KEY"),
                 latency=args.latency, dimensions=args.dimensions)
        return 0
    if args.command == "dev":
        return dev.run_dev(port=args.port, stub_port=args.stub_port, redis_url=args.redis_url)
    if args.command == "serve":
        return cli_ops.serve(_settings(need_secret=True), args.host, args.port)
    if args.command == "worker":
        return cli_ops.worker(_settings(need_secret=False), burst=args.burst)
    if args.command == "send":
        return cli_ops.send(_settings(need_secret=True), args.type, url=args.url, data=args.data, event_id=args.id)

    need_secret = args.command == "audit" and args.audit_command == "verify"
    settings = _settings(need_secret=need_secret)
    table: dict[tuple[str, str | None], Callable[[], Any]] = {
        ("events", "show"): lambda: cli_ops.events_show(settings, args.event_id),
        ("deployments", None): lambda: cli_ops.deployments(settings, as_json=args.json),
        ("corpus", "load"): lambda: cli_ops.corpus_load(settings, args.file, args.collection, args.model),
        ("corpus", "export"): lambda: cli_ops.corpus_export(settings, args.collection),
        ("corpus", "search"): lambda: cli_ops.corpus_search(settings, args.text, args.collection, args.k),
        ("dead-letter", "list"): lambda: cli_ops.dead_letter_list(settings, as_json=args.json),
        ("replay", None): lambda: cli_ops.replay(settings, args.event_id, all_dead=args.all_dead_lettered),
        ("audit", "export"): lambda: cli_ops.audit_export(settings, args.out),
        ("audit", "verify"): lambda: cli_ops.audit_verify(settings, args.file, args.anchor),
    }
    sub_attr = {"events": "events_command", "corpus": "corpus_command", "dead-letter": "dead_command",
                "audit": "audit_command"}.get(args.command)
    sub = getattr(args, sub_attr) if sub_attr else None
    result: int = asyncio.run(table[(args.command, sub)]())
    return result
