"""CPU time from /proc: per process tree and for the whole machine.

A tree's CPU is the sum over its live processes of utime+stime+cutime+cstime:
a child that exits is reaped by its parent, whose cutime/cstime then carry all
its time, so backends that come and go inside the window are still counted.
/proc/<pid>/stat of a process covers all its threads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # fields from 3 (state) on


def process_ticks(pid: int, *, with_children: bool = True) -> int:
    f = _stat_fields(pid)
    if f is None:
        return 0
    ticks = int(f[11]) + int(f[12])  # utime, stime
    if with_children:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime (reaped children)
    return ticks


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is not None:
            kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree_pids(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def tree_seconds(root: int, kids: dict[int, list[int]] | None = None) -> float:
    kids = children_map() if kids is None else kids
    return sum(process_ticks(pid) for pid in tree_pids(root, kids)) / TICK


def snapshot(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree."""
    kids = children_map()
    return {name: tree_seconds(pid, kids) for name, pid in roots.items()}


@dataclass
class MachineCpu:
    busy: float
    total: float
    steal: float
    forks: int  # processes created since boot


def machine() -> MachineCpu:
    """Whole-machine CPU seconds (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        text = f.read()
    parts = text.split("\n", 1)[0].split()
    forks = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("processes ")), 0)
    values = [int(v) for v in parts[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    total = sum(values[:8])
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    return MachineCpu(busy=(total - idle - steal) / TICK, total=total / TICK, steal=steal / TICK, forks=forks)


def all_processes() -> dict[int, tuple[str, int]]:
    """pid -> (command name, own CPU ticks) for every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[int(entry)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def top_others(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], exclude: set[int],
               seconds: float, n: int = 3) -> list[dict]:
    """The processes outside `exclude` that used the most CPU between two `all_processes` snapshots."""
    rows = []
    for pid, (comm, ticks) in after.items():
        if pid in exclude or pid not in before:
            continue
        delta = ticks - before[pid][1]
        if delta > 0:
            rows.append({"pid": pid, "comm": comm, "cores": delta / TICK / seconds})
    rows.sort(key=lambda r: r["cores"], reverse=True)
    return rows[:n]
