"""A local append-only spool for events that NATS cannot take now.

In durable delivery (INBOUND_EVENTS_DELIVERY=durable) a token is answered only
once its audit event is durable: acknowledged by JetStream or, while NATS is
unreachable, written here and fsync'ed. The spool is replayed to JetStream, in
order, when NATS is back (and at the next start, if the process died first).

On disk: numbered segment files in one folder, each a sequence of records
    u32 length | u32 CRC-32 of the payload | payload
(big-endian); a payload is one message as it goes to JetStream: its subject
(relative to the installation, inboundlib.events.Installation) and an EventBatch. One `append` writes all its records with one write() and one
fsync(): the send loop appends whatever gathered during the previous round, so
the cost of an fsync is shared by every request of that round.

- A crash in the middle of an append leaves a torn last record: at open, the
  first record that is short or fails its CRC ends the segment (it is cut off),
  so what follows a torn write is never read as data.
- The spool is bounded in bytes (its segments' sizes): an append that would pass
  the bound is refused whole, and the caller answers `temporarily_unavailable`.
  Events a caller can cause at will (low priority) may fill only half of it.
- Replay: `read` hands out records from the oldest, `consume` moves past those
  JetStream acknowledged and deletes segments that are wholly replayed. After a
  crash the replay starts again at the oldest segment left, so a few events may
  be published twice: JetStream drops a repeat within its duplicate window (the
  message id is the same), and the audit log stores an event id once whatever
  the time between (its primary key), so each event is stored once.
- One process per folder: a lock file (flock) refuses a second one.
- A message NATS refuses for good is set aside in `rejected` (bounded), not retried.
- Private: the folder is 0700 and its files 0600 (the events name clients and subjects).

Not thread-safe: the event bus calls it from one task at a time (in a worker thread,
so that disk waits do not stall the event loop).
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from inbound.events.v1 import events_pb2
from inboundlib.config import ConfigError, Env

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_SUBJECT_LEN = struct.Struct(">H")
SUFFIX = ".spool"
LOCK_NAME = "lock"
REJECTED_NAME = "rejected"  # messages NATS refused for good (set_aside)
DEFAULT_SEGMENT_BYTES = 4 << 20


DURABLE = "durable"
BUFFERED = "buffered"
DEFAULT_LIMIT_BYTES = 1 << 30


def default_directory(process_name: str) -> Path:
    """Under the process's state (XDG_STATE_HOME, else ~/.local/state): a Kubernetes pod
    mounts a volume and sets INBOUND_EVENTS_SPOOL_DIR instead."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "inbound" / "events-spool" / process_name


def from_env(env: Env, process_name: str) -> Spool | None:
    """The spool of durable delivery (INBOUND_EVENTS_DELIVERY=durable, the default), or
    None for buffered delivery, which an operator chooses explicitly (and is warned about)."""
    delivery = env.choice("INBOUND_EVENTS_DELIVERY", DURABLE, (DURABLE, BUFFERED))
    directory = env.str("INBOUND_EVENTS_SPOOL_DIR", str(default_directory(process_name)))
    limit = env.int("INBOUND_EVENTS_SPOOL_BYTES", DEFAULT_LIMIT_BYTES, minimum=4096)
    if delivery == BUFFERED:
        log.warning("INBOUND_EVENTS_DELIVERY=buffered: tokens are answered before their audit events are "
                    "durable; events held in memory are lost if this process dies during a NATS outage "
                    "(see the metrics inbound_events_in_memory and inbound_events_in_memory_oldest_seconds)")
        return None
    return Spool(directory, limit)


def _private(path: str, flags: int) -> int:
    """open()'s opener: a file only its owner may read (0600)."""
    return os.open(path, flags, 0o600)


class SpoolFull(Exception):
    """The spool cannot take these events without passing its bound."""


@dataclass(frozen=True)
class Record:
    """One spooled message: where it is (segment number, offset, size on disk) and what it carries."""
    segment: int
    offset: int
    size: int
    subject: str
    events: list[events_pb2.Event]


def encode(subject: str, events: list[events_pb2.Event]) -> bytes:
    subject_bytes = subject.encode()
    payload = _SUBJECT_LEN.pack(len(subject_bytes)) + subject_bytes + \
        events_pb2.EventBatch(events=events).SerializeToString()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> tuple[str, list[events_pb2.Event]]:
    (n,) = _SUBJECT_LEN.unpack_from(payload)
    subject = payload[_SUBJECT_LEN.size:_SUBJECT_LEN.size + n].decode()
    batch = events_pb2.EventBatch()
    batch.ParseFromString(payload[_SUBJECT_LEN.size + n:])
    return subject, list(batch.events)


class Spool:
    def __init__(self, directory: str | Path, limit_bytes: int, *,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES):
        if limit_bytes <= 0:
            raise ValueError("the spool bound must be positive")
        self.directory = Path(directory)
        self.limit_bytes = limit_bytes
        # Segments well below the bound, so that replayed ones are deleted (and their
        # space given back) long before the bound is reached.
        self.segment_bytes = max(4096, min(segment_bytes, limit_bytes // 8))
        self._segments: dict[int, int] = {}  # number -> bytes on disk (valid records only)
        self._offset = 0  # of the next record to replay, in the oldest segment (older ones are deleted)
        self._last_number = 0  # segment numbers only grow: replay order is their order
        self._unread = 0  # records not yet consumed
        self._file = None  # the segment being appended to
        self._lock = None
        self.fsyncs = 0

    # --- open / close ---------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the folder, cut off a torn tail, count what is left to replay.
        A folder that cannot be used is a ConfigError (the process does not start)."""
        try:
            # The events name clients, subjects and addresses: the folder and its files are
            # this process's alone (0700 / 0600), whatever the umask.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.directory.stat().st_uid == os.geteuid():  # a volume's mount point may be another's
                self.directory.chmod(0o700)
            lock = open(self.directory / LOCK_NAME, "a+b", opener=_private)
        except OSError as exc:
            raise ConfigError(f"INBOUND_EVENTS_SPOOL_DIR {self.directory} cannot be used: {exc.strerror}") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(f"INBOUND_EVENTS_SPOOL_DIR {self.directory} is in use by another process "
                              "(each process needs a spool folder of its own)") from None
        self._lock = lock
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            number = int(path.stem)
            path.chmod(0o600)  # one an earlier version wrote with the umask's mode
            size, count = self._scan(path)
            if size == 0:
                path.unlink()
                continue
            self._segments[number] = size
            self._unread += count
            self._last_number = max(self._last_number, number)
        if self._segments:
            log.info("event spool holds events to replay", extra={"events_messages": self._unread,
                                                                   "bytes": self.bytes})
        self._sync_dir()

    def _scan(self, path: Path) -> tuple[int, int]:
        """The length of the valid records at the start of `path`, and their count;
        anything after them (a torn or corrupt record) is cut off."""
        data = path.read_bytes()
        offset = count = 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[offset + _HEADER.size:end]) != crc:
                break
            offset, count = end, count + 1
        if offset < len(data):
            log.warning("event spool: torn or corrupt record cut off",
                        extra={"segment": path.name, "offset": offset, "bytes_dropped": len(data) - offset})
            with open(path, "r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
        return offset, count

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # --- state ----------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return sum(self._segments.values())

    @property
    def empty(self) -> bool:
        """Nothing is left to replay."""
        return self._unread == 0

    @property
    def unread(self) -> int:
        """Messages spooled and not yet replayed."""
        return self._unread

    # --- append ---------------------------------------------------------------------------------

    def append(self, messages: list[tuple[str, list[events_pb2.Event]]], *, low_priority: bool = False) -> None:
        """Write these messages and fsync once; all or nothing (SpoolFull: none written)."""
        if not messages:
            return
        data = b"".join(encode(subject, events) for subject, events in messages)
        bound = self.limit_bytes // 2 if low_priority else self.limit_bytes
        if self.bytes + len(data) > bound:
            raise SpoolFull(f"event spool full ({self.bytes} of {self.limit_bytes} bytes)")
        number = self._last_number
        if self._file is None or self._segments.get(number, 0) >= self.segment_bytes:
            number = self._new_segment(number + 1)
        size = self._segments[number]
        try:
            view = memoryview(data)
            while view:  # unbuffered: what a failed write (a full disk) leaves is on disk, not in a buffer
                view = view[self._file.write(view):]
            os.fsync(self._file.fileno())
        except BaseException:
            # Whatever reached the file is past the valid end we keep; cut it so the next
            # append does not follow a partial record.
            try:
                os.ftruncate(self._file.fileno(), size)
            except Exception:
                pass
            raise
        self.fsyncs += 1
        self._segments[number] = size + len(data)
        self._unread += len(messages)

    def _new_segment(self, number: int) -> int:
        if self._file is not None:
            self._file.close()
        self._file = open(self.directory / f"{number:016d}{SUFFIX}", "ab", buffering=0, opener=_private)
        self._segments[number] = 0
        self._last_number = number
        self._sync_dir()  # the new file's name is durable too, not only its contents
        return number

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- set aside ------------------------------------------------------------------------------

    def set_aside(self, records: list[Record]) -> bool:
        """Keep messages NATS refused for good (a subject these credentials may not publish) in
        the file `rejected`, in the segments' format: moved into the spool folder of a (stopped)
        process allowed to publish them as segment 0000000000000000.spool (segments are numbered
        from 1), they are replayed first at its next start. Bounded at an eighth
        of the spool's bound; False (nothing kept) past it."""
        data = b"".join(encode(r.subject, r.events) for r in records)
        path = self.directory / REJECTED_NAME
        if (path.stat().st_size if path.exists() else 0) + len(data) > self.limit_bytes // 8:
            return False
        with open(path, "ab", buffering=0, opener=_private) as f:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        return True

    # --- replay ---------------------------------------------------------------------------------

    def read(self, max_messages: int) -> list[Record]:
        """Up to `max_messages` of the oldest records not yet consumed, in order."""
        records: list[Record] = []
        oldest = min(self._segments, default=0)
        for number in sorted(self._segments):
            if len(records) >= max_messages:
                break
            end = self._segments[number]
            start = self._offset if number == oldest else 0
            if start >= end:
                continue
            with open(self.directory / f"{number:016d}{SUFFIX}", "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            pos = 0
            while pos < len(data) and len(records) < max_messages:
                length, _crc = _HEADER.unpack_from(data, pos)
                subject, events = _decode(data[pos + _HEADER.size:pos + _HEADER.size + length])
                records.append(Record(number, start + pos, _HEADER.size + length, subject, events))
                pos += _HEADER.size + length
        return records

    def consume(self, records: list[Record]) -> None:
        """`records` (the oldest ones, as `read` gave them) are in JetStream: move past
        them, and delete the segments wholly replayed."""
        if not records:
            return
        last = records[-1]
        self._unread -= len(records)
        end = last.offset + last.size
        for number in sorted(self._segments):
            if number == last.segment and end < self._segments[number]:
                self._offset = end
                break
            if number > last.segment:
                break
            if number == self._last_number and self._file is not None:
                self._file.close()  # the segment being appended to is wholly replayed: start a new one
                self._file = None
            (self.directory / f"{number:016d}{SUFFIX}").unlink(missing_ok=True)
            del self._segments[number]
            self._offset = 0
