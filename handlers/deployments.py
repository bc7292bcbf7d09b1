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

__all__ = ["APPLY_SCRIPT", "DeploymentEvent", "apply_fields", "handle", "list_deployments"]

DeploymentEvent = DeploymentCreated | DeploymentReady | DeploymentUpdated | DeploymentFailed | DeploymentDeleted

_STATUS = {
    "deployment.ready": "ready",
    "deployment.updated": "ready",
    "deployment.failed": "failed",
    "deployment.deleted": "deleted",
}

# KEYS: deployment hash, history list, deployments set.
# ARGV: created, event id, history entry (a JSON object; the script adds "applied"), field pairs...
# Everything is checked and computed before the first write, so the script cannot stop half-way. ``created``
# values are compared exactly, as digit strings (leading zeros dropped, then length, then text): Lua numbers
# are doubles, in which 2**53 + 1 and 2**53 are equal.
_APPLY = """
local function digits(n) return type(n) == 'string' and string.find(n, '^%d+$') ~= nil end
local function canonical(n) return (string.gsub(n, '^0+(%d)', '%1')) end
local function newer(a, b)  -- a > b, both digit strings
  a, b = canonical(a), canonical(b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local created = ARGV[1]
if not digits(created) then return redis.error_reply('ERR deployments.apply: created is not a decimal integer') end
local updated = redis.call('HGET', KEYS[1], 'updated')
if updated and not digits(updated) then
  return redis.error_reply('ERR deployments.apply: stored updated is not a decimal integer')
end
local history = ARGV[3]
if string.sub(history, 1, 1) ~= '{' or string.sub(history, -1) ~= '}' or #history < 3 then
  return redis.error_reply('ERR deployments.apply: history entry is not a JSON object')
end
if (#ARGV - 3) % 2 ~= 0 then return redis.error_reply('ERR deployments.apply: odd field list') end
local fields, deployment_id = {}, nil
for i = 4, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'deployment_id' then deployment_id = ARGV[i + 1] end
end
if not deployment_id then return redis.error_reply('ERR deployments.apply: no deployment_id field') end
local last = redis.call('HGET', KEYS[1], 'last_event_id') or ''
local applied = false
if not updated then
  applied = true
else
  applied = newer(created, updated) or (canonical(created) == canonical(updated) and ARGV[2] >= last)
end
local entry = string.sub(history, 1, -2) .. ',"applied":' .. (applied and 'true' or 'false') .. '}'
-- writes
if applied then
  redis.call('HSET', KEYS[1], 'updated', created, 'last_event_id', ARGV[2], unpack(fields))
  redis.call('SADD', KEYS[3], deployment_id)
end
redis.call('LPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], 0, 99)
return applied and 1 or 0
"""

APPLY_SCRIPT = _APPLY


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
    history = json.dumps({"event_id": event.id, "type": event.type, "created": event.created}, separators=(",", ":"))
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
