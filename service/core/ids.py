"""Random ids in ``uuid.uuid4().hex``'s format (request ids, audit delivery ids), cheap enough per request."""

from __future__ import annotations

import os

__all__ = ["new_id"]


class _Ids:
    """New ids in ``uuid.uuid4().hex``'s format, from urandom read 4 KiB at a time instead of 16 bytes per call."""

    _BATCH = 256

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        # Never share random bytes with a forked child: it starts with an empty buffer (checked at fork time,
        # not with a getpid() system call per id).
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buf, self._pos = b"", 0

    def new(self) -> str:
        if self._pos >= len(self._buf):
            self._buf, self._pos = os.urandom(16 * self._BATCH), 0
        raw = bytearray(self._buf[self._pos:self._pos + 16])
        self._pos += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()


new_id = _Ids().new
