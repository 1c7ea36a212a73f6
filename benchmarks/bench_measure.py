"""How ``benchmarks/bench.py`` measures: the machine and library versions it records, device
synchronisation and peak memory, the thread-sync latency probe that tells how noisy CPU figures
are, and :class:`StepTimer`, the rates and FLOPs of the optimizer steps after warm-up.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

from dapt.core.runtime import cpu_has_native_bf16

# --------------------------------------------------------------------------------------------
# Environment


def device_info(device: str) -> dict:
    info = {"type": device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))), cuda=torch.version.cuda)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info.update(name=name, cpu_capability=getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
                    native_bf16=cpu_has_native_bf16())
    return info


def versions() -> dict:
    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    if device == "cuda":  # (a full collection costs ~1 s with transformers loaded: only where memory is measured)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def thread_sync_latency_ms(threads: int = 2, n: int = 200) -> float:
    """Median time of a small ``threads``-way parallel op: ~0.015 ms on an idle machine, several ms
    when the cores are busy with other work (each parallel region then waits for a descheduled
    thread). Recorded with the CPU figures because it decides how noisy they are."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(304, 384)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        x.add(x)
        times.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    return round(statistics.median(times) * 1e3, 3)


# --------------------------------------------------------------------------------------------
# Timing


class StepTimer:
    """Timestamps at the end of every optimizer step and the non-pad token counts of every step's
    batch. The rate covers steps ``warmup .. end``: from the end of the last warm-up step to the end
    of the last step, data loading included. The device is synchronized only at those two points,
    so neither side is slowed down by a host sync per step; the other timestamps are host times."""

    def __init__(self, device: str, warmup: int, total: int):
        self.device = device
        self.sync_at = {warmup, total}  # 1-based step numbers whose end is synchronized
        self.ends: list[float] = []
        self.counts: list[tuple] = []  # per step: (tensor [tokens, sum of squared lengths, masked], rows, padded)

    def count(self, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None, mlm: bool = False) -> None:
        """Kernels only (no tensor built from a Python number, which would wait for the device)."""
        lengths = attention_mask.sum(dim=1).long()
        masked = (labels != -100).sum() if mlm and labels is not None else lengths.new_zeros(())
        self.counts.append((torch.stack([lengths.sum(), (lengths * lengths).sum(), masked.long()]),
                            attention_mask.shape[0], attention_mask.numel()))

    def step_end(self) -> None:
        if len(self.ends) + 1 in self.sync_at:
            sync(self.device)
        self.ends.append(time.perf_counter())

    def result(self, warmup: int, params: dict, peak_tflops: Optional[float], masked_only: bool = False) -> dict:
        steps = len(self.ends)
        if steps <= warmup or len(self.counts) != steps:
            raise RuntimeError(f"timer saw {steps} steps and {len(self.counts)} batches; need more than {warmup} steps")
        measured = self.counts[warmup:]
        tokens, squares, masked = torch.stack([c[0].detach().cpu() for c in measured]).double().sum(dim=0).tolist()
        rows, padded = sum(c[1] for c in measured), sum(c[2] for c in measured)
        seconds = self.ends[-1] - self.ends[warmup - 1]
        model_flops = 6 * params["total"] * tokens + 12 * params["layers"] * params["hidden"] * squares
        executed = model_flops
        if masked_only:
            executed = model_flops - 6 * params["head"] * (tokens - masked)
        tflops = model_flops / seconds / 1e12
        return {
            "steps": steps - warmup,
            "warmup_steps": warmup,
            "seconds": round(seconds, 4),
            "tokens": int(tokens),
            "samples": int(rows),
            "padded_tokens": int(padded),
            "padding_fraction": round(1 - tokens / padded, 4) if padded else None,
            "masked_tokens": int(masked) if masked else None,
            "tokens_per_s": tokens / seconds,
            "samples_per_s": rows / seconds,
            "step_ms": 1e3 * seconds / (steps - warmup),
            "model_tflops_per_s": tflops,
            "executed_tflops_per_s": executed / seconds / 1e12,
            "mfu": tflops / peak_tflops if peak_tflops else None,
        }
