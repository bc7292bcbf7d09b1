"""Exported audit files (``audit export``, and the archives written before a trim): parsing and the trailer.

An export is JSON lines, one per entry (``entry_as_json``: bodies resolved, so the file verifies offline),
then one trailer line ``{"export": {...}}`` with the count, the base the first entry chains from, the head
the last entry must be, and a MAC over all of it keyed like entry MACs. A file cut at either end, or with
entries dropped, no longer matches its trailer; a trailer rewritten to match needs the webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from runinfra_webhooks.service.core.audit import entry_key

__all__ = ["AuditFileError", "ExportReader", "ExportTrailer", "parse_export_line", "parse_lines"]

Entry = tuple[str, dict[bytes, bytes]]


class AuditFileError(ValueError):
    """The file is not an audit export: the message names the line."""


@dataclass(frozen=True, slots=True)
class ExportTrailer:
    count: int
    base_seq: int
    base_hash: str
    head_seq: int
    head_hash: str
    exported_ms: int
    secret_index: int = 0
    mac: str = ""

    def _signed_part(self) -> bytes:
        fields = {"count": self.count, "base_seq": self.base_seq, "base_hash": self.base_hash,
                  "head_seq": self.head_seq, "head_hash": self.head_hash, "exported_ms": self.exported_ms,
                  "secret_index": self.secret_index}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, secret: bytes) -> ExportTrailer:
        mac = hmac.new(entry_key(secret), b"export\n" + self._signed_part(), hashlib.sha256).hexdigest()
        return ExportTrailer(self.count, self.base_seq, self.base_hash, self.head_seq, self.head_hash,
                             self.exported_ms, self.secret_index, mac)

    def authentic(self, secrets: Sequence[bytes]) -> bool:
        if not 0 <= self.secret_index < len(secrets) or not self.mac:
            return False
        expected = self.signed(secrets[self.secret_index]).mac
        return hmac.compare_digest(expected, self.mac)

    def as_line(self) -> str:
        return json.dumps({"export": {
            "format": 2, "count": self.count, "base_seq": self.base_seq, "base_hash": self.base_hash,
            "head_seq": self.head_seq, "head_hash": self.head_hash, "exported_ms": self.exported_ms,
            "secret_index": self.secret_index, "mac": self.mac,
        }}, separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ExportTrailer:
        try:
            return cls(int(obj["count"]), int(obj["base_seq"]), str(obj["base_hash"]), int(obj["head_seq"]),
                       str(obj["head_hash"]), int(obj["exported_ms"]), int(obj.get("secret_index", 0)),
                       str(obj.get("mac", "")))
        except (KeyError, TypeError, ValueError):
            msg = "the export trailer is malformed"
            raise AuditFileError(msg) from None


def parse_export_line(line: str, number: int) -> Entry | ExportTrailer:
    try:
        obj = json.loads(line)
    except ValueError:
        msg = f"line {number}: not JSON"
        raise AuditFileError(msg) from None
    if not isinstance(obj, dict):
        msg = f"line {number}: not a JSON object"
        raise AuditFileError(msg)
    if "export" in obj and isinstance(obj["export"], dict):
        return ExportTrailer.from_json(obj["export"])
    stream_id = obj.pop("stream_id", None)
    if not isinstance(stream_id, str):
        msg = f"line {number}: not an audit entry (no stream_id)"
        raise AuditFileError(msg)
    fields: dict[bytes, bytes] = {}
    for name, value in obj.items():
        try:
            if name.endswith("_hex"):
                fields[name[:-4].encode()] = bytes.fromhex(str(value))
            else:
                fields[name.encode()] = str(value).encode()
        except ValueError:
            msg = f"line {number}: field {name} is not hex"
            raise AuditFileError(msg) from None
    return stream_id, fields


class ExportReader:
    """The entries of an export or archive file as its lines are read, one at a time.

    Once iterated to the end, ``trailer`` (None when there is none), ``count``, ``first`` and ``last`` hold
    what the cut check needs, so a file of any length is checked without holding its entries.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        self.trailer: ExportTrailer | None = None
        self.count = 0
        self.first: Entry | None = None
        self.last: Entry | None = None

    def __iter__(self) -> Iterator[Entry]:
        for number, line in enumerate(self._lines, start=1):
            if not line.strip():
                continue
            if self.trailer is not None:
                msg = f"line {number}: entries after the export trailer"
                raise AuditFileError(msg)
            parsed = parse_export_line(line, number)
            if isinstance(parsed, ExportTrailer):
                self.trailer = parsed
                continue
            self.count += 1
            if self.first is None:
                self.first = parsed
            self.last = parsed
            yield parsed


def parse_lines(lines: Iterable[str]) -> tuple[list[Entry], ExportTrailer | None]:
    """Entries in file order and the trailer (None when there is none). A trailer must be the last line."""
    reader = ExportReader(lines)
    entries = list(reader)
    return entries, reader.trailer
