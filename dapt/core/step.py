"""Guards of the optimizer step both stages share."""

from __future__ import annotations

import torch


@torch.no_grad()
def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (one device sync)."""
    named = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]
