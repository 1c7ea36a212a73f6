"""Peak memory and CPU time of a process tree, sampled (psutil) while it runs.

:class:`TreeMonitor` polls a root process and all its descendants (``torchrun``'s ranks, the
``datasets`` ``num_proc`` workers they fork) every ``interval`` seconds and keeps, per process,
the peak resident set (RSS) and the peak of its unique set (USS: the pages no other process
shares, what the process itself costs; the RSS also counts memory-mapped Arrow pages, page cache
the kernel can drop, and a forked worker's pages still shared with its parent), the peaks of the
sums over all live processes, and the CPU seconds each used.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class ProcessPeak:
    pid: int
    role: str
    rss: int = 0
    uss: int = 0
    cpu_s: float = 0.0

    def as_dict(self) -> dict:
        return {"pid": self.pid, "role": self.role, "peak_rss_mib": round(self.rss / 2**20, 1),
                "peak_uss_mib": round(self.uss / 2**20, 1), "cpu_s": round(self.cpu_s, 2)}


@dataclass
class TreeMonitor:
    root_pid: int
    interval: float = 0.2
    peaks: dict[int, ProcessPeak] = field(default_factory=dict)
    total_rss: int = 0
    total_uss: int = 0
    samples: int = 0

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, process: psutil.Process, parent_roles: dict[int, str]) -> str:
        if process.pid == self.root_pid:
            return "main"
        try:
            rank = process.environ().get("RANK")
        except (psutil.Error, OSError):
            rank = None
        parent = parent_roles.get(process.ppid(), "?")
        if rank is not None and not parent.startswith("rank"):
            return f"rank {rank}"
        return f"{parent} worker"

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        roles = {pid: peak.role for pid, peak in self.peaks.items()}
        total_rss = total_uss = 0
        for process in processes:
            try:
                with process.oneshot():
                    memory = process.memory_full_info()  # (smaps_rollup: ~1 ms)
                    cpu = process.cpu_times()
                    peak = self.peaks.get(process.pid)
                    if peak is None:
                        peak = self.peaks[process.pid] = ProcessPeak(process.pid, self._role(process, roles))
                        roles[process.pid] = peak.role
            except psutil.Error:
                continue
            peak.rss, peak.uss = max(peak.rss, memory.rss), max(peak.uss, memory.uss)
            peak.cpu_s = max(peak.cpu_s, cpu.user + cpu.system)
            total_rss += memory.rss
            total_uss += memory.uss
        self.total_rss, self.total_uss = max(self.total_rss, total_rss), max(self.total_uss, total_uss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def report(self) -> dict:
        processes = sorted(self.peaks.values(), key=lambda p: (p.role, p.pid))
        return {"processes": [p.as_dict() for p in processes], "samples": self.samples,
                "peak_rss_mib": round(max((p.rss for p in processes), default=0) / 2**20, 1),
                "peak_uss_mib": round(max((p.uss for p in processes), default=0) / 2**20, 1),
                "peak_total_rss_mib": round(self.total_rss / 2**20, 1),
                "peak_total_uss_mib": round(self.total_uss / 2**20, 1),
                "cpu_s": round(sum(p.cpu_s for p in processes), 2)}


def run_monitored(command: list[str], *, env: dict, cwd=None, interval: float = 0.2, timeout: float | None = None) -> tuple[int, float, dict, str]:
    """Run ``command`` with its tree sampled; returns ``(returncode, wall seconds, report, stderr tail)``."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        with TreeMonitor(process.pid, interval) as monitor:
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        wall = time.perf_counter() - started
        err.seek(0)
        tail = err.read()[-4000:].decode(errors="replace")
    return code, wall, monitor.report(), tail
