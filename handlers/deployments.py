"""The deployment registry: the current state of each deployment, safe against out-of-order delivery.

An event applies only if it is newer than the one applied last (by ``created``, ties broken by event id so
every worker reaches the same answer). Older events are still recorded in the deployment's history.
Applying is one Lua script: compare and write cannot interleave with another worker's.
"""

from __future__ import annotations

import json
from typing import Any

from runinfra_webhooks.handlers.context import HandlerContext
from runinfra_webhooks.handlers.registry import handler
from runinfra_webhooks.service.core.events import (
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentFailed,
    DeploymentReady,
    DeploymentUpdated,
)
from runinfra_webhooks.service.storage import keys

__all__ = ["DeploymentEvent", "apply_fields", "handle", "list_deployments"]

DeploymentEvent = DeploymentCreated | DeploymentReady | DeploymentUpdated | DeploymentFailed | DeploymentDeleted

_STATUS = {
    "deployment.ready": "ready",
    "deployment.updated": "ready",
    "deployment.failed": "failed",
    "deployment.deleted": "deleted",
}

# KEYS: deployment hash, history list, deployments set. ARGV: created, event id, history json, field pairs...
_APPLY = """
local updated = tonumber(redis.call('HGET', KEYS[1], 'updated') or '-1')
local last = redis.call('HGET', KEYS[1], 'last_event_id') or ''
local created = tonumber(ARGV[1])
local applied = 0
if created > updated or (created == updated and ARGV[2] >= last) then
  applied = 1
  local fields = {}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], 'updated', ARGV[1], 'last_event_id', ARGV[2], unpack(fields))
  redis.call('SADD', KEYS[3], redis.call('HGET', KEYS[1], 'deployment_id'))
end
local entry = cjson.decode(ARGV[3])
entry['applied'] = applied == 1
redis.call('LPUSH', KEYS[2], cjson.encode(entry))
redis.call('LTRIM', KEYS[2], 0, 99)
return applied
"""


def apply_fields(event: DeploymentEvent) -> dict[str, str]:
    """Pure: the registry fields an event sets (fields it does not carry keep their previous value)."""
    data = event.data
    fields: dict[str, str] = {"deployment_id": data.deployment_id, "pipeline_id": data.pipeline_id}
    if isinstance(event, DeploymentCreated):
        fields["status"] = event.data.status
    else:
        fields["status"] = _STATUS[event.type]
    for name in ("model", "modality", "revision"):
        value = getattr(data, name, None)
        if value is not None:
            fields[name] = value
    return fields


@handler("deployment.created")
@handler("deployment.ready")
@handler("deployment.updated")
@handler("deployment.failed")
@handler("deployment.deleted")
async def handle(event: DeploymentEvent, ctx: HandlerContext) -> None:
    fields = apply_fields(event)
    history = json.dumps({"event_id": event.id, "type": event.type, "created": event.created})
    flat: list[Any] = [x for pair in fields.items() for x in pair]
    apply = ctx.script(_APPLY)  # EVALSHA; the script is loaded once per Redis
    await apply(
        keys=[keys.deployment(event.data.deployment_id), keys.deployment_history(event.data.deployment_id),
              keys.DEPLOYMENTS],
        args=[event.created, event.id, history, *flat],
    )


async def list_deployments(redis: Any) -> list[dict[str, Any]]:
    ids = sorted(i.decode() for i in await redis.smembers(keys.DEPLOYMENTS))
    out = []
    for dep_id in ids:
        raw = await redis.hgetall(keys.deployment(dep_id))
        row: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        row["updated"] = int(row.get("updated", 0))
        out.append(row)
    return out
