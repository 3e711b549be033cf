"""Is the machine overloaded? The probe behind `execution.adaptive_scaling`.

`SystemLoadProbe` reads psutil: the machine is overloaded when the 1-minute load average is above the
number of usable CPUs, or when available memory is under `min_available` (10% of the total, at least
256 MiB). The dispatcher asks it on a timer (`PROBE_EVERY`), never in a loop; while it answers
overloaded, no new step starts except that one step may always run, so a busy machine slows a run
down but never stalls it. Tests inject their own probe.
"""
from __future__ import annotations

import os
from typing import Protocol

PROBE_EVERY = 1.0


class LoadProbe(Protocol):
    def overloaded(self) -> str | None:
        """A reason ("load 5.1 > 2 CPUs") while the machine is overloaded, else None."""


class SystemLoadProbe:
    def __init__(self, cpus: int | None = None, min_available: int | None = None):
        import psutil
        self._psutil = psutil
        self.cpus = cpus or len(os.sched_getaffinity(0))
        total = psutil.virtual_memory().total
        self.min_available = min_available if min_available is not None else max(total // 10, 256 << 20)

    def overloaded(self) -> str | None:
        load = self._psutil.getloadavg()[0]
        if load > self.cpus:
            return f"load average {load:.1f} > {self.cpus} CPUs"
        available = self._psutil.virtual_memory().available
        if available < self.min_available:
            return f"available memory {available >> 20} MiB < {self.min_available >> 20} MiB"
        return None
