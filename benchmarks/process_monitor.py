"""Peak memory and CPU time of a process tree, sampled (psutil) while it runs.

:class:`TreeMonitor` polls a root process and all its descendants (``torchrun``'s ranks, the
``datasets`` ``num_proc`` workers they fork) every ``interval`` seconds and keeps, per process,
the peak resident set (RSS) and the peak of its anonymous memory (``Pss_Anon`` of
``/proc/PID/smaps_rollup``: heap, arrays, Python objects, with the pages a forked worker still
shares with its parent divided among the sharers): what the process needs. The RSS also counts the
memory-mapped Arrow cache's pages, page cache the kernel drops when memory is short, so it grows
with the corpus a process has read through without the process needing more; the peaks of the
sums over all live processes, and the CPU seconds each used.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


def anonymous_pss(process: psutil.Process) -> int:
    """Bytes of anonymous memory, shared pages divided among their sharers (Linux 5.x+ ``Pss_Anon``;
    elsewhere psutil's USS, which also counts a process's own file-backed pages)."""
    try:
        with open(f"/proc/{process.pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process.memory_full_info().uss


@dataclass
class ProcessPeak:
    pid: int
    role: str
    rss: int = 0
    anon: int = 0
    cpu_s: float = 0.0
    first_seen: float = 0.0  # seconds since the monitor started: which workers lived at the same time
    last_seen: float = 0.0

    def as_dict(self) -> dict:
        return {"pid": self.pid, "role": self.role, "peak_rss_mib": round(self.rss / 2**20, 1),
                "peak_anon_mib": round(self.anon / 2**20, 1), "cpu_s": round(self.cpu_s, 2),
                "seen_s": [round(self.first_seen, 2), round(self.last_seen, 2)]}


@dataclass
class TreeMonitor:
    root_pid: int
    interval: float = 0.2
    peaks: dict[int, ProcessPeak] = field(default_factory=dict)
    total_rss: int = 0
    total_anon: int = 0
    samples: int = 0

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()

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
        total_rss = total_anon = 0
        now = time.perf_counter() - self._started
        for process in processes:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    anon = anonymous_pss(process)
                    cpu = process.cpu_times()
                    peak = self.peaks.get(process.pid)
                    if peak is None:
                        peak = self.peaks[process.pid] = ProcessPeak(process.pid, self._role(process, roles), first_seen=now)
                        roles[process.pid] = peak.role
            except psutil.Error:
                continue
            peak.rss, peak.anon = max(peak.rss, rss), max(peak.anon, anon)
            peak.cpu_s = max(peak.cpu_s, cpu.user + cpu.system)
            peak.last_seen = now
            total_rss += rss
            total_anon += anon
        self.total_rss, self.total_anon = max(self.total_rss, total_rss), max(self.total_anon, total_anon)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def report(self) -> dict:
        processes = sorted(self.peaks.values(), key=lambda p: (p.role, p.pid))
        return {"processes": [p.as_dict() for p in processes], "samples": self.samples,
                "peak_rss_mib": round(max((p.rss for p in processes), default=0) / 2**20, 1),
                "peak_anon_mib": round(max((p.anon for p in processes), default=0) / 2**20, 1),
                "peak_total_rss_mib": round(self.total_rss / 2**20, 1),
                "peak_total_anon_mib": round(self.total_anon / 2**20, 1),
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
