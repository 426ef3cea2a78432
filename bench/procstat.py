"""What a process (or the machine) spent, read from ``/proc``: Linux only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_TICKS: Final = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``relay serve --workers N``: the N workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in children.read_text().split()]
            except OSError:  # the thread or the process ended meanwhile
                continue
    return found


def _own_cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name, in parentheses, may hold spaces: count fields after its closing one.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of a process and its descendants, all threads."""
    return sum(_own_cpu_seconds(p) for p in tree(pid))


def _own_peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size so far in KiB (``VmHWM``), added up over the process tree.

    For several processes it is the sum of each one's peak: an upper bound of their
    peak together.
    """
    return sum(_own_peak_rss_kib(p) for p in tree(pid))


@dataclass(frozen=True, slots=True)
class Jiffies:
    """The machine's CPU time, all cores, from the first line of ``/proc/stat``."""

    busy: int
    total: int
    #: time the hypervisor gave to other virtual machines (counted in ``busy`` too)
    steal: int

    @classmethod
    def now(cls) -> Jiffies:
        """Read them now."""
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        total = sum(values[:8])  # guest time is already counted in user time
        return cls(total - idle, total, values[7])

    def busy_since(self, before: Jiffies) -> float:
        """The fraction of all cores that was busy between ``before`` and this reading."""
        total = self.total - before.total
        return (self.busy - before.busy) / total if total else 0.0

    def steal_since(self, before: Jiffies) -> float:
        """Cores taken by the hypervisor for other machines, on average, since ``before``."""
        total = self.total - before.total
        return (self.steal - before.steal) / total * (os.cpu_count() or 1) if total else 0.0

    def others_since(self, before: Jiffies, ours_s: float) -> float:
        """Cores used by everything but ``ours_s`` CPU seconds, on average, since ``before``.

        That is other jobs on the machine, steal time, and also the kernel's interrupt and
        softirq time (loopback networking included), which no process is charged for.
        """
        cores = os.cpu_count() or 1
        wall = (self.total - before.total) / _TICKS / cores
        return ((self.busy - before.busy) / _TICKS - ours_s) / wall if wall else 0.0
