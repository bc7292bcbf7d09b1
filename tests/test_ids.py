"""Request and delivery ids: uuid4 hex, never repeated, not even by a forked worker process."""

from __future__ import annotations

import os
import uuid

from runinfra_webhooks.service.core.ids import new_id


def test_ids_are_uuid4_hex_and_distinct() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i for i in ids)


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_id()  # the parent has a buffer of random bytes in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, " ".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = set(os.read(read_end, 4096).decode().split())
    os.close(read_end)
    parent = {new_id() for _ in range(8)}
    assert len(child) == 8 and not child & parent
