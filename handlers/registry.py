"""Which reactions run for which event type: the built-ins, the modules named in RUNINFRA_HANDLERS and those
of the ``runinfra_webhooks.handlers`` entry-point group.

``@handler(TYPE)`` only declares: importing a module of handlers records them, and ``load_registry`` (run
once at start-up by the receiver, the worker and the ``handlers`` command) imports the configured modules and
keeps what each declared, in declaration order, built-in reactions first. The registry is a plain value
passed to whoever needs it: the receiver (which types to queue, which models to check) and the worker (what to
run).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, create_model

from runinfra_webhooks.service.core.events import CATALOGUE, Envelope

if TYPE_CHECKING:
    from runinfra_webhooks.handlers.context import HandlerContext

__all__ = [
    "BUILTIN_REACTIONS",
    "ENTRY_POINT_GROUP",
    "HandlerFunc",
    "HandlerLoadError",
    "Registration",
    "Registry",
    "handler",
    "load_registry",
]

ENTRY_POINT_GROUP = "runinfra_webhooks.handlers"
# Name in RUNINFRA_BUILTIN_REACTIONS -> module; also the order they run in, whatever order the setting lists.
BUILTIN_REACTIONS: Mapping[str, str] = {
    "registry": "runinfra_webhooks.handlers.deployments",
    "embeddings": "runinfra_webhooks.handlers.embeddings",
    "followup": "runinfra_webhooks.handlers.followup",
}
_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")

HandlerFunc = Callable[[Any, "HandlerContext"], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])


class HandlerLoadError(Exception):
    """A handler module that does not import, or a handler of the wrong shape: start-up stops (exit 2)."""


@dataclass(frozen=True)
class Registration:
    event_type: str
    func: HandlerFunc = field(repr=False)
    name: str  # module:qualname, also what marks it finished within an attempt and scopes its keys
    model: type[BaseModel] | None = None  # the model of ``data`` for a type outside the catalogue
    origin: str = ""  # "builtin", "RUNINFRA_HANDLERS" or "entry point <distribution>"
    event_model: type[Envelope] | None = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        return self.origin == "builtin"

    def parse(self, obj: dict[str, Any]) -> Envelope:
        """The event this handler receives, for a type outside the catalogue (raises ValidationError)."""
        return (self.event_model or Envelope).model_validate(obj)


_declared: list[Registration] = []


def _check_shape(func: Any, where: str) -> None:
    if not inspect.iscoroutinefunction(func):
        msg = f"{where} must be an async def taking (event, ctx)"
        raise HandlerLoadError(msg)
    params = [p for p in inspect.signature(func).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_rest = [p for p in params[2:] if p.default is p.empty]
    if len(params) < 2 or required_rest:
        msg = f"{where} must be an async def taking (event, ctx)"
        raise HandlerLoadError(msg)


def handler(event_type: str, model: type[BaseModel] | None = None) -> Callable[[F], F]:
    """Declare ``async def f(event, ctx)`` as a reaction to ``event_type``.

    ``model`` (a pydantic model of ``data``) is for a type outside the catalogue: the receiver then queues
    such events and dead-letters those whose ``data`` does not fit. Without it the handler receives the
    ``Envelope``.
    """
    if not isinstance(event_type, str) or _TYPE.fullmatch(event_type) is None or len(event_type) > 255:
        msg = f"@handler({event_type!r}): an event type is dot-separated lowercase words, e.g. deployment.ready"
        raise HandlerLoadError(msg)
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        msg = f"@handler({event_type!r}, model=...): model must be a pydantic model class"
        raise HandlerLoadError(msg)
    if model is not None and event_type in CATALOGUE:
        msg = f"@handler({event_type!r}, model=...): {event_type} has its own model; model= is for other types"
        raise HandlerLoadError(msg)

    def register(func: F) -> F:
        name = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"
        _check_shape(func, f"handler {name}")
        event_model = None
        if model is not None:
            event_model = create_model(f"{model.__name__}Event", __base__=Envelope, data=(model, ...))
        _declared.append(Registration(event_type, func, name, model, event_model=event_model))
        return func

    return register


@dataclass(frozen=True)
class Registry:
    registrations: tuple[Registration, ...] = ()

    def for_type(self, event_type: str) -> tuple[Registration, ...]:
        return tuple(r for r in self.registrations if r.event_type == event_type)

    def queued_types(self) -> Mapping[str, tuple[type[BaseModel], ...]]:
        """Types outside the catalogue that some handler takes, with the models their ``data`` must fit."""
        out: dict[str, tuple[type[BaseModel], ...]] = {}
        for r in self.registrations:
            if r.event_type not in CATALOGUE:
                out[r.event_type] = out.get(r.event_type, ()) + ((r.model,) if r.model is not None else ())
        return out

    def as_json(self) -> list[dict[str, Any]]:
        return [{"type": r.event_type, "handler": r.name, "origin": r.origin,
                 "model": f"{r.model.__module__}:{r.model.__qualname__}" if r.model is not None else None}
                for r in self.registrations]


def _import(module: str, origin: str) -> list[Registration]:
    """Import ``module`` and return what it declared (also when something imported it before)."""
    before = len(_declared)
    was_loaded = module in sys.modules
    try:
        importlib.import_module(module)
    except HandlerLoadError as exc:
        raise HandlerLoadError(f"{origin}: {exc}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        msg = f"{origin}: module {module!r} cannot be imported: {type(exc).__name__}{': ' + first if first else ''}"
        raise HandlerLoadError(msg) from None
    found = _declared[before:] if not was_loaded else [r for r in _declared if r.name.split(":")[0] == module]
    return [Registration(r.event_type, r.func, r.name, r.model, origin, r.event_model) for r in found]


def _entry_point_modules() -> Iterable[tuple[str, str]]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        yield ep.value.split(":")[0].strip(), f"entry point {ep.name} ({dist})"


def load_registry(*, builtin: Sequence[str] = tuple(BUILTIN_REACTIONS), modules: Sequence[str] = (),
                  use_entry_points: bool = True) -> Registry:
    """Import the built-in reactions chosen, then ``modules``, then the entry points; raises HandlerLoadError."""
    unknown = [b for b in builtin if b not in BUILTIN_REACTIONS]
    if unknown:
        msg = f"RUNINFRA_BUILTIN_REACTIONS: unknown reaction {unknown[0]!r} (known: {', '.join(BUILTIN_REACTIONS)})"
        raise HandlerLoadError(msg)
    sources: list[tuple[str, str]] = [(BUILTIN_REACTIONS[b], "builtin") for b in BUILTIN_REACTIONS if b in builtin]
    sources += [(m, "RUNINFRA_HANDLERS") for m in modules]
    if use_entry_points:
        sources += list(_entry_point_modules())
    seen: set[tuple[str, str]] = set()
    out: list[Registration] = []
    for module, origin in sources:
        for r in _import(module, origin):
            if (r.event_type, r.name) not in seen:
                seen.add((r.event_type, r.name))
                out.append(r)
    return Registry(tuple(out))
