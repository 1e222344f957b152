"""The local event spool (inboundlib.spool), on a real folder: order, a torn last
record after a crash, the byte bound, fsync in batches, one process per folder."""
from __future__ import annotations

import os
import resource

import pytest

from inbound.events.v1 import events_pb2
from inboundlib.config import ConfigError
from inboundlib.spool import Spool, SpoolFull

SUBJECT = "inbound.events.token.issued"


def issued(i: int) -> events_pb2.Event:
    return events_pb2.Event(event_id=f"e{i:05d}", token_issued=events_pb2.TokenIssued(jti=f"j{i}", scope="api.read " * 8))


def ids(records) -> list[str]:
    return [e.event_id for r in records for e in r.events]


def opened(path, limit: int = 1 << 20, **kwargs) -> Spool:
    spool = Spool(path, limit, **kwargs)
    spool.open()
    return spool


def test_records_come_back_in_order_across_segments_and_a_restart(tmp_path):
    spool = opened(tmp_path, segment_bytes=4096)  # small segments: several files
    for round_ in range(20):
        spool.append([(SUBJECT, [issued(round_ * 10 + i) for i in range(10)])])
    assert len(list(tmp_path.glob("*.spool"))) > 2
    first = spool.read(5)
    assert ids(first) == [f"e{i:05d}" for i in range(50)]
    spool.consume(first)
    spool.close()

    again = opened(tmp_path, segment_bytes=4096)  # a restart: the rest, still in order
    rest = again.read(1000)
    # What was consumed in a deleted segment is gone; the segment consume was part-way through
    # is replayed from its start (the audit log stores an event id once).
    assert ids(rest)[-150:] == [f"e{i:05d}" for i in range(50, 200)]
    assert ids(rest) == sorted(ids(rest))
    again.consume(rest)
    assert again.empty and again.bytes == 0 and not list(tmp_path.glob("*.spool"))


def test_a_torn_last_record_is_cut_off_and_what_follows_reads_cleanly(tmp_path):
    spool = opened(tmp_path)
    spool.append([(SUBJECT, [issued(1)])])
    spool.append([(SUBJECT, [issued(2)])])
    spool.close()
    [segment] = tmp_path.glob("*.spool")
    whole = segment.stat().st_size
    with open(segment, "r+b") as f:  # a crash in the middle of writing record 2
        f.truncate(whole - 3)

    again = opened(tmp_path)
    assert ids(again.read(10)) == ["e00001"]
    # The torn bytes are gone from the disk too: the bound counts what the folder holds.
    assert sum(p.stat().st_size for p in tmp_path.glob("*.spool")) == again.bytes
    again.append([(SUBJECT, [issued(3)])])  # appended after the cut, not after the torn bytes
    assert ids(again.read(10)) == ["e00001", "e00003"]
    again.close()
    assert ids(opened(tmp_path).read(10)) == ["e00001", "e00003"]


def test_a_record_that_fails_its_checksum_ends_the_segment(tmp_path):
    spool = opened(tmp_path)
    spool.append([(SUBJECT, [issued(1)])])
    spool.append([(SUBJECT, [issued(2)])])
    spool.close()
    [segment] = tmp_path.glob("*.spool")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # garbage where record 2's last byte should be (length intact)
    segment.write_bytes(bytes(data))
    assert ids(opened(tmp_path).read(10)) == ["e00001"]


def test_the_bound_refuses_a_whole_append_and_low_priority_gets_half(tmp_path):
    limit = 64 << 10
    spool = opened(tmp_path, limit)
    n = 0
    with pytest.raises(SpoolFull):
        for _ in range(1000):  # far more than fits
            spool.append([(SUBJECT, [issued(n + i) for i in range(20)])])
            n += 20
    assert spool.bytes <= limit
    assert len(ids(spool.read(10_000))) == n  # nothing of the refused append was written
    assert sum(p.stat().st_size for p in tmp_path.glob("*.spool")) == spool.bytes

    low = opened(tmp_path / "low", limit)
    with pytest.raises(SpoolFull):
        for _ in range(1000):
            low.append([(SUBJECT, [issued(0)] * 20)], low_priority=True)
    assert limit // 2 - 4096 < low.bytes <= limit // 2
    low.append([(SUBJECT, [issued(1)] * 20)])  # what matters still has the other half


def test_one_fsync_per_append_however_many_events_it_carries(tmp_path, monkeypatch):
    spool = opened(tmp_path)
    spool.append([(SUBJECT, [issued(0)])])  # the first append also syncs the folder (new segment)
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    spool.append([(SUBJECT, [issued(i) for i in range(1, 257)]), ("inbound.events.token.denied", [issued(999)])])
    assert len(calls) == 1
    spool.append([(SUBJECT, [issued(1000)])])
    assert len(calls) == 2


def test_a_second_process_cannot_use_the_same_folder(tmp_path):
    first = opened(tmp_path)
    with pytest.raises(ConfigError, match="in use"):
        opened(tmp_path)
    first.close()
    opened(tmp_path).close()  # free again once the first one is gone


def test_the_folder_and_its_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        spool = opened(tmp_path / "a" / "spool")
        spool.append([(SUBJECT, [issued(0)])])
        spool.close()
    finally:
        os.umask(old)
    folder = tmp_path / "a" / "spool"
    assert folder.stat().st_mode & 0o777 == 0o700
    files = list(folder.iterdir())
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files), [oct(f.stat().st_mode) for f in files]
    # A folder and segment an earlier version left readable to all are made private at open.
    folder.chmod(0o755)
    for f in files:
        f.chmod(0o644)
    opened(folder).close()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files if f.name.endswith(".spool"))


def test_a_full_disk_refuses_the_append_and_leaves_the_spool_whole(tmp_path):
    """A write the disk cannot take (here the kernel's file-size limit, RLIMIT_FSIZE, as a
    full disk would: part of it written, then an error) is refused whole; the next append
    and the replay see exactly the records before and after it."""
    spool = opened(tmp_path / "spool")
    spool.append([(SUBJECT, [issued(0)])])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (spool.bytes + 200, hard))  # room for part of one record
    try:
        with pytest.raises(OSError):
            spool.append([(SUBJECT, [issued(i)]) for i in range(1, 6)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    spool.append([(SUBJECT, [issued(6)])])
    assert ids(spool.read(100)) == ["e00000", "e00006"] and spool.unread == 2
    spool.close()
    assert ids(opened(tmp_path / "spool").read(100)) == ["e00000", "e00006"]


def test_what_is_set_aside_is_bounded_and_private(tmp_path):
    spool = opened(tmp_path / "spool", limit=64 << 10)  # set aside: up to 8 KiB
    spool.append([(SUBJECT, [issued(i)]) for i in range(3)])
    records = spool.read(3)
    assert spool.set_aside(records[:1])
    kept = (tmp_path / "spool" / "rejected").stat()
    assert kept.st_mode & 0o777 == 0o600
    while spool.set_aside(records[:1]):
        pass
    assert (tmp_path / "spool" / "rejected").stat().st_size <= 8 << 10
    spool.close()
