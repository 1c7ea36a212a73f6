"""Stage 1: continue masked-language-model training of a pretrained encoder on in-domain text.

    accelerate launch dapt/pretrain.py --config configs/pretrain.yaml [key=value ...]
    python -m dapt.pretrain --config configs/demo/pretrain.yaml train.max_steps=50
    dapt-pretrain --config ... output_dir=runs/my-dapt

Reads top to bottom: config -> Accelerator -> model and corpus -> held-out perplexity of the
pretrained model (after a head-only warm-up when the checkpoint has no MLM head) -> the training
loop (checkpoints, evaluation, a wall-clock budget) -> the adapted encoder, tokenizer,
``metrics.jsonl`` and ``dapt_summary.json`` in ``output_dir``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: `accelerate launch dapt/pretrain.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dapt.config import ConfigError, parse_cli, to_dict
from dapt.data import CorpusConfig, build_blocks
from dapt.masking import EVAL_EPOCH, MLMCollator
from dapt.modeling import MaskedLMObjective, head_parameters, load_masked_lm
from dapt.runtime import (
    CheckpointConfig,
    ImplConfig,
    ThroughputMeter,
    inner_state_dict,
    linear_warmup_decay,
    logger,
    make_accelerator,
    make_optimizer,
    open_run_dir,
    parameter_groups,
    raise_config,
    steps_from_budget,
    write_json,
)


@dataclass
class ModelConfig:
    name_or_path: str = "distilbert/distilbert-base-uncased"
    revision: Optional[str] = None


@dataclass
class TrainConfig:
    seed: int = 42
    batch_size: int = 32  # per device; the global batch is batch_size x processes x grad_accum
    eval_batch_size: int = 64  # per device
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    max_grad_norm: float = 1.0
    log_every: int = 20
    eval_every: int = 500  # 0: only before and after
    head_warmup_steps: int = 0  # head-only steps (encoder frozen) when the checkpoint has no MLM head
    head_warmup_lr: float = 1e-3
    time_budget_minutes: float = 0.0  # 0: no wall-clock limit
    max_nonfinite: int = 20  # skipped steps with a non-finite gradient before the run stops


@dataclass
class PretrainImplConfig(ImplConfig):
    masked_only_logits: bool = True  # vocabulary projection only at masked positions


@dataclass
class PretrainConfig:
    output_dir: str = "runs/dapt"
    run_name: str = "dapt"
    tensorboard: bool = False
    report_to: list[str] = field(default_factory=list)  # trackers: tensorboard, wandb, mlflow, ... (Accelerate's)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: PretrainImplConfig = field(default_factory=PretrainImplConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        self.impl.validate()
        if not 0 < self.data.mlm_probability < 1:
            raise_config("data.mlm_probability", self.data.mlm_probability, "a probability in (0, 1)")
        if self.data.mask_replace_prob + self.data.random_replace_prob > 1:
            raise_config("data.random_replace_prob", self.data.random_replace_prob, "mask + random <= 1")
        for key in ("batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self.train, key) < 1:
                raise_config(f"train.{key}", getattr(self.train, key), "an integer >= 1")
        if self.train.max_steps <= 0 and self.train.epochs <= 0:
            raise_config("train.epochs", self.train.epochs, "> 0 (or set train.max_steps)")


# --------------------------------------------------------------------------------------------


def make_collator(config: PretrainConfig, tokenizer) -> MLMCollator:
    data = config.data
    return MLMCollator(
        tokenizer, mlm_probability=data.mlm_probability, whole_word_mask=data.whole_word_mask,
        mask_replace_prob=data.mask_replace_prob, random_replace_prob=data.random_replace_prob,
        seed=config.train.seed,
    )


@torch.no_grad()
def evaluate(objective, loader, accelerator) -> dict:
    """Held-out MLM loss per masked token (a token-weighted mean across all processes) and its
    perplexity. Masks are fixed, so two evaluations of the same weights agree."""
    objective.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    total_tokens = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        with accelerator.autocast():
            losses, example = objective(**batch)
        rows = batch["input_ids"].shape[0]
        loss_per_example = torch.zeros(rows, dtype=torch.float64, device=losses.device).index_add_(0, example, losses.double())
        tokens_per_example = torch.zeros(rows, dtype=torch.float64, device=losses.device).index_add_(
            0, example, torch.ones_like(losses, dtype=torch.float64)
        )
        loss_per_example, tokens_per_example = accelerator.gather_for_metrics((loss_per_example, tokens_per_example))
        total_loss += loss_per_example.sum()
        total_tokens += tokens_per_example.sum()
    objective.train()
    loss = (total_loss / total_tokens).item()
    return {"heldout_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "heldout_masked_tokens": int(total_tokens.item())}


def warm_up_head(objective, loader, collator, accelerator, config: PretrainConfig) -> None:
    """Train only the MLM head (encoder frozen, no encoder backward) for a fresh head to become an
    honest "before" baseline. Gradients are averaged across processes by hand: the encoder's
    parameters get none, which DDP would not allow."""
    inner = accelerator.unwrap_model(objective)
    model = inner.model
    params = head_parameters(model)
    optimizer = make_optimizer(parameter_groups([(str(i), p) for i, p in enumerate(params)], config.train.head_warmup_lr, 0.0))
    steps = config.train.head_warmup_steps
    schedule = linear_warmup_decay(optimizer, warmup_steps=max(1, steps // 10), total_steps=steps)
    progress = tqdm(total=steps, desc="head warm-up", disable=not accelerator.is_local_main_process)
    done, epoch = 0, 0
    while done < steps:
        collator.set_epoch(-1 - epoch)  # masks unlike any training epoch's
        for batch in loader:
            with accelerator.autocast():
                losses, _ = inner(**batch, freeze_encoder=True)
                loss = losses.mean()
            loss.backward()
            for p in params:
                if p.grad is not None and accelerator.num_processes > 1:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
            optimizer.step()
            schedule.step()
            model.zero_grad(set_to_none=True)
            done += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if done >= steps:
                break
        epoch += 1
    progress.close()


def pretrain(config: PretrainConfig) -> dict:
    """Run stage 1 as configured; returns the summary also written to ``dapt_summary.json``."""
    started = time.time()
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config.impl, output_dir, config.train.grad_accum, config.tensorboard, config.report_to)
    if accelerator.log_with:
        accelerator.init_trackers(config.run_name)
    set_seed(config.train.seed)
    logger.info(f"processes: {accelerator.num_processes}, device: {accelerator.device}, precision: {accelerator.mixed_precision}")

    model, tokenizer, had_head = load_masked_lm(config.model.name_or_path, config.impl.attn_implementation, config.model.revision)
    train_blocks, heldout_blocks, corpus = build_blocks(config.data, tokenizer, accelerator, seed=config.train.seed)
    logger.info(f"corpus: {corpus}")

    collator, eval_collator = make_collator(config, tokenizer), make_collator(config, tokenizer)
    eval_collator.set_epoch(EVAL_EPOCH)
    workers = config.impl.dataloader_workers
    loader_kwargs = dict(num_workers=workers, pin_memory=config.impl.pin_memory and torch.cuda.is_available())
    # the loader's own generator: creating an iterator must not draw from the global RNG that
    # dropout uses, or a resumed run (one extra iterator) would drift from an uninterrupted one
    loader_generator = torch.Generator().manual_seed(config.train.seed)
    train_loader = DataLoader(
        train_blocks, batch_size=config.train.batch_size, shuffle=True, collate_fn=collator,
        generator=loader_generator, **loader_kwargs,
    )
    eval_loader = DataLoader(heldout_blocks, batch_size=config.train.eval_batch_size, collate_fn=eval_collator, **loader_kwargs)

    model.to(accelerator.device)
    objective = MaskedLMObjective(model, masked_only=config.impl.masked_only_logits)
    optimizer = make_optimizer(
        parameter_groups(model.named_parameters(), config.train.lr, config.train.weight_decay), fused=config.impl.fused_adamw
    )
    if config.impl.compile:
        objective = torch.compile(objective)
    objective, optimizer, train_loader, eval_loader = accelerator.prepare(objective, optimizer, train_loader, eval_loader)

    total_steps = steps_from_budget(len(train_loader), config.train.grad_accum, config.train.epochs, config.train.max_steps)
    warmup = config.train.warmup_steps or round(config.train.warmup_ratio * total_steps)
    scheduler = linear_warmup_decay(optimizer.optimizer, warmup, total_steps, config.train.min_lr)
    accelerator.register_for_checkpointing(scheduler)
    checkpoints, resume_from, metrics = open_run_dir(accelerator, output_dir, config, config.checkpoint)

    # --- the pretrained baseline, or where a run left off
    if resume_from is not None:
        state = checkpoints.load(resume_from)
    else:
        state = {"epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "nonfinite": 0, "wall_time_s": 0.0}
        before = evaluate(objective, eval_loader, accelerator)
        state["baseline"] = "pretrained_head" if had_head else "random_head"
        state["before"] = before
        state["before_random_head"] = None if had_head else before
        if not had_head and config.train.head_warmup_steps > 0:
            logger.info(f"random-head perplexity {before['perplexity']:.1f}; warming up the head for {config.train.head_warmup_steps} steps")
            warm_up_head(objective, train_loader, collator, accelerator, config)
            state["before"] = evaluate(objective, eval_loader, accelerator)
            state["baseline"] = "head_warmup"
        elif not had_head:
            logger.warning("no MLM head and train.head_warmup_steps=0: the 'before' perplexity is that of a random "
                           "head; set train.head_warmup_steps > 0 for an honest baseline")
        metrics.log({"event": "baseline", **state["before"], "baseline": state["baseline"]}, step=0)
        logger.info(f"held-out perplexity before DAPT: {state['before']['perplexity']:.2f} ({state['baseline']})")

    # --- training
    step = state.get("step", 0)
    session_start = time.time() - state["wall_time_s"]
    budget_s = config.train.time_budget_minutes * 60
    meter = ThroughputMeter(warmup=1)
    running_loss = torch.zeros((), device=accelerator.device)
    running_batches = 0
    local_tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # no host sync per step
    out_of_time = False
    progress = tqdm(total=total_steps, initial=step, desc="DAPT", disable=not accelerator.is_local_main_process)
    objective.train()
    while step < total_steps and not out_of_time:
        epoch = state["epoch"]
        train_loader.set_epoch(epoch)
        collator.set_epoch(epoch)
        skip = state["batch_in_epoch"]
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in loader:
            with accelerator.accumulate(objective):
                with accelerator.autocast():
                    losses, _ = objective(**batch)
                    loss = losses.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = config.train.max_grad_norm if config.train.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(objective.parameters(), max_norm)
                    if accelerator.mixed_precision != "fp16" and not torch.isfinite(grad_norm):
                        state["nonfinite"] += 1  # the fp16 scaler skips such steps by itself
                        logger.warning(f"step {step + 1}: non-finite gradient norm, update skipped ({state['nonfinite']})")
                        if state["nonfinite"] > config.train.max_nonfinite:
                            raise FloatingPointError(f"{state['nonfinite']} non-finite updates: stopping (lower train.lr?)")
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            state["batch_in_epoch"] += 1
            running_loss += loss.detach().float()
            running_batches += 1
            local_tokens += batch["attention_mask"].sum()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            progress.update(1)

            if step % config.train.log_every == 0 or step == total_steps:
                tokens = int(accelerator.reduce(local_tokens, "sum"))
                mean_loss = accelerator.reduce(running_loss / running_batches, "mean").item()
                state["tokens_seen"] += tokens
                meter.update(tokens, 0)
                record = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "epoch": epoch, "tokens_seen": state["tokens_seen"]}
                if meter.elapsed > 0:
                    record["tokens_per_s"] = meter.tokens_per_s
                metrics.log(record, step=step)
                progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{record['lr']:.2e}")
                running_loss.zero_()
                running_batches = 0
                local_tokens.zero_()
                if budget_s:
                    over = torch.tensor(float(time.time() - session_start > budget_s), device=accelerator.device)
                    out_of_time = bool(accelerator.reduce(over, "max").item())
            if config.train.eval_every and step % config.train.eval_every == 0 and step < total_steps:
                result = evaluate(objective, eval_loader, accelerator)
                metrics.log({"event": "eval", **result}, step=step)
                logger.info(f"step {step}: held-out perplexity {result['perplexity']:.2f}")
            if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                state["wall_time_s"] = time.time() - session_start
                checkpoints.save(step, state)
            if step >= total_steps or out_of_time:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    progress.close()
    if out_of_time:
        logger.warning(f"wall-clock budget of {config.train.time_budget_minutes} min reached at step {step}/{total_steps}")
    state["tokens_seen"] += int(accelerator.reduce(local_tokens, "sum"))

    # --- the result
    after = evaluate(objective, eval_loader, accelerator)
    metrics.log({"event": "final", **after}, step=step)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(objective).model
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
        state_dict=inner_state_dict(accelerator, objective, "model."),
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
    before = state["before"]
    summary = {
        "model_name_or_path": config.model.name_or_path,
        "run_name": config.run_name,
        "corpus": corpus,
        "block_size": config.data.block_size,
        "mlm_probability": config.data.mlm_probability,
        "whole_word_mask": config.data.whole_word_mask,
        "mask_replace_prob": collator.masker.mask_replace_prob,
        "random_replace_prob": collator.masker.random_replace_prob,
        "had_mlm_head": had_head,
        "baseline": state["baseline"],
        "perplexity_before": before["perplexity"],
        "perplexity_before_random_head": (state["before_random_head"] or {}).get("perplexity"),
        "heldout_loss_before": before["heldout_loss"],
        "perplexity_after": after["perplexity"],
        "heldout_loss_after": after["heldout_loss"],
        "heldout_masked_tokens": after["heldout_masked_tokens"],
        "tokens_seen": state["tokens_seen"],
        "steps": step,
        "total_steps": total_steps,
        "epochs": round(step * config.train.grad_accum * config.train.batch_size * accelerator.num_processes / len(train_blocks), 4),
        "stopped_by_time_budget": out_of_time,
        "nonfinite_steps": state["nonfinite"],
        "wall_time_s": round(time.time() - session_start, 2),
        "process_wall_time_s": round(time.time() - started, 2),
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "global_batch_size": config.train.batch_size * accelerator.num_processes * config.train.grad_accum,
        "config": to_dict(config),
    }
    write_json(accelerator, output_dir / "dapt_summary.json", summary)
    logger.info(f"held-out perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}; encoder saved to {output_dir}")
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group that
        tracker.finish()  # a following stage-2 run in the same processes (dapt-ablate) still needs
    return summary


def main(argv=None) -> None:
    config = parse_cli(PretrainConfig, argv, "Stage 1: domain-adaptive MLM pretraining", default_config=None)
    try:
        pretrain(config)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        logger.error(str(error))
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
