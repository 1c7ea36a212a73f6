"""Run one of the product's CLIs exactly as ``python -m MODULE ARGS...`` would, and record what its
GPU code paths did, for ``tools/gpu/gpu_check.py``:

    python tools/gpu/gpu_observe.py REPORT.json MODULE [ARGS...]
    python tools/gpu/gpu_observe.py REPORT.json benchmarks.bench [ARGS...]

The product is not changed and none of its internal names is used: the observers wrap public
``torch`` entry points before the module runs (``torch.optim.AdamW``, ``torch.amp.GradScaler``,
``torch.compile``, ``torch.autocast``, ``torch.utils.data.DataLoader``), count what was asked of
them, and ``REPORT.json`` gets those counts plus the peak CUDA memory of the process and its exit
code. Worker processes (DataLoader workers) write nothing.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
import time


def _install(seen: dict) -> None:
    import torch

    def wrap_init(cls, record):
        original = cls.__init__

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            record(self, args, kwargs)

        cls.__init__ = __init__

    def adamw(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        seen["adamw"].append({"fused": bool(optimizer.defaults.get("fused")), "params_on_cuda": all(p.is_cuda for p in params)})

    def loader(dl, args, kwargs):
        seen["dataloaders"].append({"num_workers": dl.num_workers, "pin_memory": bool(dl.pin_memory)})

    def autocast(ctx, args, kwargs):
        if getattr(ctx, "_enabled", True):
            seen["autocast"].add(f"{ctx.device}:{str(ctx.fast_dtype).replace('torch.', '')}")

    wrap_init(torch.optim.AdamW, adamw)
    wrap_init(torch.utils.data.DataLoader, loader)
    wrap_init(torch.autocast, autocast)

    scaler_cls = torch.amp.GradScaler
    for method in ("scale", "step"):
        original = getattr(scaler_cls, method)

        def counted(self, *args, __original=original, __name=method, **kwargs):
            if self.is_enabled():
                seen[f"grad_scaler_{__name}"] += 1
                seen["_scaler"] = self  # its scale is read at the end
            return __original(self, *args, **kwargs)

        setattr(scaler_cls, method, counted)

    compile_original = torch.compile
    # a CPU dry run traces with dynamo + AOT autograd but skips inductor's C++ code generation,
    # which takes minutes on a small shared CPU; on the GPU the product's own default is used
    backend = os.environ.get("GPU_CHECK_COMPILE_BACKEND")

    @functools.wraps(compile_original)
    def compile(*args, **kwargs):
        seen["compile_calls"] += 1
        if backend:
            kwargs["backend"] = backend
            seen["compile_backend"] = backend
        return compile_original(*args, **kwargs)

    torch.compile = compile


def _report(seen: dict, module: str, exit_code, started: float) -> dict:
    import torch

    report = {
        "module": module, "exit_code": exit_code, "wall_s": round(time.time() - started, 2),
        "adamw": seen["adamw"], "fused_adamw": any(a["fused"] for a in seen["adamw"]),
        "dataloaders": seen["dataloaders"], "autocast": sorted(seen["autocast"]),
        "compile_calls": seen["compile_calls"], "compile_backend": seen.get("compile_backend", "default"), "grad_scaler_scale": seen["grad_scaler_scale"],
        "grad_scaler_step": seen["grad_scaler_step"], "grad_scaler_scale_value": None,
        "cuda": torch.cuda.is_available(), "peak_memory_gib": None, "peak_reserved_gib": None,
    }
    if seen.get("_scaler") is not None:
        report["grad_scaler_scale_value"] = float(seen["_scaler"].get_scale())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        report["device_name"] = torch.cuda.get_device_name()
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        report["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    return report


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python tools/gpu/gpu_observe.py REPORT.json MODULE [ARGS...]")
    report_path, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    seen = {"adamw": [], "dataloaders": [], "autocast": set(), "compile_calls": 0,
            "grad_scaler_scale": 0, "grad_scaler_step": 0}
    _install(seen)
    sys.argv = [module, *args]
    # as `python -m MODULE` (the working directory first) or `python FILE.py` (the file's folder first)
    sys.path[0] = os.path.dirname(os.path.abspath(module)) if module.endswith(".py") else os.getcwd()
    started, exit_code, pid = time.time(), 0, os.getpid()
    try:
        if module.endswith(".py"):
            runpy.run_path(module, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        raise
    except BaseException:
        exit_code = 1
        raise
    finally:
        if os.getpid() == pid:
            with open(report_path, "w") as handle:
                json.dump(_report(seen, module, exit_code, started), handle, indent=2)


if __name__ == "__main__":
    main()
