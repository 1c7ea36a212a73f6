"""Masked-only MLM logits against full-vocabulary logits, per architecture, in one process.

    python -m benchmarks.bench_masked_logits --device cpu --json masked-logits.json          # base shapes
    python -m benchmarks.bench_masked_logits --device cuda --batch 32 --block 512 --steps 20
    python -m benchmarks.bench_masked_logits --tiny --steps 1 --warmup 1                      # smoke test

For each architecture (BERT-base, RoBERTa-base and ModernBERT-base shapes, random init; ``--arch``
picks), the stage-1 training step of ``dapt/pretrain.py`` - :class:`dapt.modeling.MaskedLMObjective`
on a :class:`dapt.masking.MLMCollator` batch, autocast, backward, gradient clipping, AdamW from
:func:`dapt.core.runtime.make_optimizer` - runs with ``masked_only`` on and off on the same batches, the
two interleaved ``--repeats`` times in ABBA order; the report is the ratio of the median step times (full / masked
only) and the losses of both, which must agree. Only a ratio measured in one run is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

# Base shapes of the public checkpoints (config.json of bert-base-uncased, roberta-base, ModernBERT-base)
SHAPES = {
    "bert": dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
    "roberta": dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                    pad_token_id=1),
    "modernbert": dict(model_type="modernbert", vocab_size=50368, hidden_size=768, num_hidden_layers=22,
                       num_attention_heads=12, intermediate_size=1152, pad_token_id=50283, bos_token_id=50281,
                       eos_token_id=50282, cls_token_id=50281, sep_token_id=50282),
}
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat and side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side before the first repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="tiny widths (a smoke test), the vocabularies kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class _SyntheticTokenizer:
    """What MLMCollator reads from a tokenizer: ids above the specials, a [MASK] id, its length."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.all_special_ids = [0, 1, 2, 3, 4]
        self.pad_token_id, self.mask_token_id, self.mask_token = 0, 4, "[MASK]"

    def __len__(self):
        return self.vocab_size

    def convert_tokens_to_ids(self, token):
        return self.mask_token_id


def batches(vocab_size: int, args, n: int) -> list[dict]:
    from dapt.masking import MLMCollator

    generator = torch.Generator().manual_seed(args.seed)
    collator = MLMCollator(_SyntheticTokenizer(vocab_size), seed=args.seed)
    blocks = torch.randint(5, vocab_size, (n * args.batch, args.block), generator=generator)
    return [collator([{"input_ids": blocks[i * args.batch + r], "index": i * args.batch + r} for r in range(args.batch)])
            for i in range(n)]


def measure(name: str, args) -> dict:
    from transformers import AutoConfig, AutoModelForMaskedLM

    from dapt.modeling import MaskedLMObjective
    from dapt.core.runtime import make_optimizer, parameter_groups

    values = dict(SHAPES[name])
    values.update(TINY if args.tiny else {})
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(args.seed)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").to(args.device)
    sides = {"full": MaskedLMObjective(model, masked_only=False), "masked_only": MaskedLMObjective(model, masked_only=True)}
    optimizer = make_optimizer(parameter_groups(model.named_parameters(), 1e-4, 0.01), fused=args.device == "cuda")
    data = [{k: v.to(args.device) for k, v in b.items()} for b in batches(config.vocab_size, args, args.steps)]
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(objective, batch) -> float:
        with autocast:
            loss = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])[0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync, the same on both sides

    def timed(objective) -> float:
        started = time.perf_counter()
        for batch in data:
            step(objective, batch)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / len(data)

    model.train()
    for objective in sides.values():
        for _ in range(args.warmup):
            step(objective, data[0])
    times = {side: [] for side in sides}
    for repeat in range(args.repeats):  # ABBA order: a load that drifts during the run hits both sides alike
        order = list(sides.items()) if repeat % 2 == 0 else list(reversed(sides.items()))
        for side, objective in order:
            times[side].append(timed(objective))
    # the two losses on one batch, same weights, no dropout difference: eval mode, no update
    model.eval()
    with torch.no_grad(), autocast:
        losses = {side: objective(**{k: data[0][k] for k in ("input_ids", "attention_mask", "labels")})[0].mean().item()
                  for side, objective in sides.items()}
    medians = {side: statistics.median(values) for side, values in times.items()}
    return {
        "architecture": type(model).__name__, "strategy": sides["masked_only"].strategy,
        "shape": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")},
        "step_s_median": {side: round(v, 4) for side, v in medians.items()},
        "step_s_all": times, "speedup_masked_only": round(medians["full"] / medians["masked_only"], 3),
        "loss_same_batch": losses,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    report = {"settings": vars(args), "torch_threads": torch.get_num_threads(), "results": {}}
    for name in [a.strip() for a in args.arch.split(",") if a.strip()]:
        if name not in SHAPES:
            raise SystemExit(f"--arch: unknown architecture {name!r} (known: {', '.join(SHAPES)})")
        print(f"[{name}] ...", flush=True)
        result = measure(name, args)
        report["results"][name] = result
        print(f"[{name}] {result['strategy']}: full {result['step_s_median']['full']:.3f} s/step, masked-only "
              f"{result['step_s_median']['masked_only']:.3f} s/step -> x{result['speedup_masked_only']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
