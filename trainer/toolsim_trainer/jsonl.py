"""Append-only JSONL that survives interruption: whole lines, flushed and fsynced, resumable.

Traces and evaluation runs write one record per unit of work (a question, a candidate) as they
finish, so a killed run keeps everything it finished. On reopen the file is recovered: a last line
cut short by the interruption (no newline and not a whole JSON object) is truncated away, never
kept and never duplicated, and the keys already written are known so the caller skips them. A
malformed line *before* the last one is not an interruption but corruption, and raises
``JsonlError`` naming file and line rather than being silently dropped.

Whole-file outputs (exported data sets, reports) go through ``write_jsonl_atomic`` or
``write_text_atomic`` instead: written to a temporary file beside the target, fsynced, then
renamed over it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

Record = dict[str, Any]
KeyFunc = Callable[[Mapping[str, Any]], Hashable]


class JsonlError(ValueError):
    """A JSONL file that cannot be read back; the message names the file and line."""


def key_by(*fields: str) -> KeyFunc:
    """A key function reading ``fields`` of a record (one field → its value, several → a tuple)."""

    def key(record: Mapping[str, Any]) -> Hashable:
        try:
            values = tuple(record[f] for f in fields)
        except KeyError as exc:
            raise JsonlError(f"record has no key field {exc.args[0]!r} (fields {fields})") from exc
        return values[0] if len(values) == 1 else values

    return key


def iter_jsonl(path: str | Path) -> Iterator[Record]:
    """Every record of a complete JSONL file (blank lines skipped); a bad line raises JsonlError."""
    path = Path(path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield _decode(raw, path, number)


def read_jsonl(path: str | Path) -> list[Record]:
    """All records of a complete JSONL file."""
    return list(iter_jsonl(path))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Replace ``path`` with ``records`` as JSONL all at once; returns how many were written."""
    lines = [_encode(r) for r in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)


class JsonlWriter:
    """An append-only JSONL file recovered on open; ``write`` is one whole, durable line.

    ``key`` names a record's unit of work (e.g. ``key_by("id", "candidate")``); ``done`` holds the
    keys already in the file, so a resumed run skips them and ``write`` refuses a duplicate key.
    Safe to call from several threads and from asyncio tasks (a write is short and never awaits).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        key: KeyFunc | None = None,
        fsync: bool = True,
        keep_empty: bool = True,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._keep_empty = keep_empty
        self._written = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.records: list[Record] = []
        """Records that were in the file when it was opened (after recovery)."""
        self.done: set[Hashable] = set()
        """Keys of every record in the file, those read on open and those written since."""
        self.dropped_bytes = 0
        """Bytes of a cut-short last line removed on open (0 when the file was whole)."""

    def open(self) -> JsonlWriter:
        """Recover the file (drop a cut-short last line), load its keys, open it for appending."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records, self.dropped_bytes = _recover(self.path)
        if self._key is not None:
            for number, record in enumerate(self.records, start=1):
                k = self._key(record)
                if k in self.done:
                    raise JsonlError(f"{self.path}: record {number} repeats key {k!r}")
                self.done.add(k)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def __contains__(self, key: object) -> bool:
        return key in self.done

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line, flushed (and fsynced) before returning."""
        data = _encode(record).encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise JsonlError(f"{self.path}: writer is not open (use `with JsonlWriter(...)`)")
            k = self._key(record) if self._key is not None else None
            if k is not None and k in self.done:
                raise JsonlError(f"{self.path}: key {k!r} is already written")
            _write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
            self._written += 1
            if k is not None:
                self.done.add(k)

    def close(self) -> None:
        """Close; with ``keep_empty=False`` a file that never held a record is removed (a
        failures log that stayed empty says nothing)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                if not self._keep_empty and not self.records and not self._written:
                    self.path.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _encode(record: Mapping[str, Any]) -> str:
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    # json.dumps never emits a raw newline (they are escaped), so one record is one line.
    return text + "\n"


def _decode(raw: bytes, path: Path, number: int) -> Record:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonlError(f"{path}:{number}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise JsonlError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
    return value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _recover(path: Path) -> tuple[list[Record], int]:
    """Records of ``path`` and how many trailing bytes were cut (the file is truncated to match).

    Only the last line may be partial: it is kept when it is a whole JSON object that merely lost
    its newline (the newline is restored), and truncated away otherwise.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = [_decode(raw, path, n) for n, raw in enumerate(lines, start=1) if raw.strip()]
    if not tail.strip():
        if tail:
            _truncate(path, len(data) - len(tail))
        return records, len(tail)
    try:
        records.append(_decode(tail, path, len(lines) + 1))
    except JsonlError:
        _truncate(path, len(data) - len(tail))
        return records, len(tail)
    with path.open("ab") as f:
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return records, 0


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
