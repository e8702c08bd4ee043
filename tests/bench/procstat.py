"""CPU and memory of a process from /proc, and the description of the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    return sum(cpu_times(pid))


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident) and VmRSS of ``pid`` in MB (10^6 bytes)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            found[name] = int(value.split()[0]) * 1024 / 1e6
    return found


def find_pid(comm: str) -> int | None:
    """The first process whose command name is ``comm`` (e.g. the broker's ``beam.smp``)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    return int(entry.name)
            except OSError:
                continue
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all processors have spent busy since boot (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


@dataclass
class CpuProbe:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``."""

    pids: dict[str, int]

    def __post_init__(self) -> None:
        self._start: dict[str, tuple[float, float]] = {}
        self._busy = 0.0
        self.used: dict[str, float] = {}
        self.system: dict[str, float] = {}

    def _read(self) -> dict[str, tuple[float, float]]:
        values = {}
        for name, pid in self.pids.items():
            try:
                values[name] = cpu_times(pid)
            except OSError:
                values[name] = (float("nan"), float("nan"))
        return values

    def start(self) -> None:
        self._start = self._read()
        self._busy = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        end = self._read()
        busy = machine_busy_seconds() - self._busy
        self.used = {name: sum(end[name]) - sum(self._start[name]) for name in end}
        self.system = {name: end[name][1] - self._start[name][1] for name in end}
        # Whatever else ran on the machine meanwhile (other test runs…): the noise on every figure.
        self.used["other"] = max(0.0, busy - sum(self.used.values()))
        return self.used


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _rabbitmq_version() -> str:
    try:
        out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> dict[str, str]:
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "memory": f"{_mem_total_gib():.1f} GiB",
        "python": platform.python_version(),
        "rabbitmq": _rabbitmq_version(),
        "kernel": platform.release(),
    }
