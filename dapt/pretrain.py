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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a file (`accelerate launch dapt/pretrain.py`): as the module
    import runpy  # (the project installed, `pip install -e .`, or on PYTHONPATH)

    runpy.run_module("dapt.pretrain", run_name="__main__", alter_sys=True)
    raise SystemExit

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dapt.core.config import parse_cli, to_dict
from dapt.core.checkpoint import CheckpointManager, refuse_sharded
from dapt.core.guard import guarded_run, run_command
from dapt.core.loop import epoch_batches
from dapt.core.rundir import final_artifacts, open_run
from dapt.core.signals import Preempted
from dapt.core.state import RunningLoss, TrainState
from dapt.core.step import OptimizerStep, check_finite, check_loss, perplexity
from dapt.core.lineage import chain_of, describe_phase, new_phase, read_summary, source_record
from dapt.data import build_blocks
from dapt.masking import EVAL_EPOCH, MLMCollator
from dapt.modeling import MaskedLMObjective, head_parameters, load_masked_lm
from dapt.pretrain_config import RESUMABLE_KEYS, PretrainConfig, TrainConfig  # noqa: F401 (the schema, importable from here)
from dapt.core.runtime import (
    ThroughputMeter,
    end_run,
    inner_state_dict,
    linear_warmup_decay,
    logger,
    make_optimizer,
    parameter_groups,
    raise_config,
    report_weights_format,
    steps_from_budget,
    write_json,
)

SUMMARY = "dapt_summary.json"  # written last: its presence marks a finished run


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
    perplexity (infinite beyond a loss of 709.8 nats, never capped). Masks are fixed, so two
    evaluations of the same weights agree."""
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
    return {"heldout_loss": loss, "perplexity": perplexity(loss), "heldout_masked_tokens": int(total_tokens.item())}


def check_heldout(result: dict, when: str, step: int, cause=None) -> None:
    """A held-out loss with no finite perplexity is a diverged model (:class:`dapt.core.step.Diverged`)."""
    check_loss("held-out loss", result["heldout_loss"], when, step, with_perplexity=True, cause=cause)


def warm_up_head(objective, loader, collator, accelerator, config: PretrainConfig) -> None:
    """Train only the MLM head (encoder frozen, no encoder backward) for a fresh head to become an
    honest "before" baseline: ``train.head_warmup_steps`` optimizer steps through the shared
    :class:`OptimizerStep` (clipping, the non-finite guard). The encoder's parameters get no
    gradients, which DDP would not allow, so the unwrapped model trains and the head's gradients
    are averaged across processes at each step. A stop signal is acted on at the first training
    step, whose checkpoint then holds the baseline."""
    inner = accelerator.unwrap_model(objective)
    params = head_parameters(inner.model)
    optimizer = accelerator.prepare(make_optimizer(
        parameter_groups([(str(i), p) for i, p in enumerate(params)], config.train.head_warmup_lr, 0.0)))
    steps = config.train.head_warmup_steps
    schedule = linear_warmup_decay(optimizer.optimizer, warmup_steps=max(1, steps // 10), total_steps=steps)

    def average_gradients():
        if accelerator.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")

    step = OptimizerStep(accelerator, inner, optimizer, schedule, TrainState(), max_grad_norm=config.train.max_grad_norm,
                         max_nonfinite=config.train.max_nonfinite, reduce_gradients=average_gradients, what="the head warm-up",
                         cause=f"the head warm-up's learning rate (train.head_warmup_lr={config.train.head_warmup_lr:g}): lower it")
    progress = tqdm(total=steps, desc="head warm-up", disable=not accelerator.is_local_main_process)
    epoch = 0
    while step.state.step < steps:
        collator.set_epoch(-1 - epoch)  # masks unlike any training epoch's
        for batch in loader:
            with accelerator.accumulate(inner):
                with accelerator.autocast():
                    loss = inner(**batch, freeze_encoder=True)[0].mean()
                stepped = step(loss)
            if stepped is None:
                continue
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if step.state.step >= steps:
                break
        epoch += 1
    progress.close()
    step.check_recovered()  # a warm-up that ends on skipped updates diverged


@dataclass
class PretrainState(TrainState):
    """Stage 1's loop state (a checkpoint's ``trainer_state.json``)."""

    tokens_seen: int = 0
    pending_tokens: int = 0  # all-process tokens since the last log line
    baseline: str = "pretrained_head"  # pretrained_head | random_head | head_warmup
    before: dict = field(default_factory=dict)  # held-out loss and perplexity before DAPT
    before_random_head: Optional[dict] = None


def pretrain(config: PretrainConfig) -> dict:
    """Run stage 1 as configured; returns the summary also written to ``dapt_summary.json``. The
    folder is checked and locked, signals handled, failures cleaned up: :func:`dapt.core.guard.guarded_run`."""
    with guarded_run(config, marker=SUMMARY) as accelerator:
        return _pretrain(config, accelerator)


def _pretrain(config: PretrainConfig, accelerator) -> dict:
    started = time.time()
    output_dir = Path(config.output_dir)
    refuse_sharded(accelerator, config.checkpoint)  # FSDP / DeepSpeed: before the data is read
    set_seed(config.train.seed)
    logger.info(f"processes: {accelerator.num_processes}, device: {accelerator.device}, precision: {accelerator.mixed_precision}")

    report_weights_format(config.model.name_or_path)
    model, tokenizer, had_head = load_masked_lm(config.model.name_or_path, config.impl.attn_implementation, config.model.revision)
    parent = read_summary(config.model.name_or_path)  # a stage-1 output: this run is its next phase
    if parent is not None:
        earlier = chain_of(parent)
        logger.info(f"continuing from a stage-1 output, {config.model.name_or_path} ({len(earlier)} phase(s), last: "
                    f"{describe_phase(earlier[-1])}), " + ("with the MLM head it saved" if had_head else "without its MLM head"))
        if not had_head:
            logger.warning(f"{config.model.name_or_path} is a stage-1 output but holds no MLM head: a fresh head is trained "
                           "instead of continuing with the one stage 1 saved")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config.data.block_size > positions:
        raise_config("data.block_size", config.data.block_size, f"at most {positions}, the positions of {config.model.name_or_path}")
    train_blocks, heldout_blocks, corpus = build_blocks(config.data, tokenizer, accelerator, seed=config.train.seed)
    logger.info(f"corpus: {corpus}")
    sources = [source_record(source) for source in config.data.sources]  # what was read, for the chain of phases

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
    checkpoints, resume_from, metrics = open_run(accelerator, config, model=objective, optimizer=optimizer, scheduler=scheduler,
                                                 resumable_keys=RESUMABLE_KEYS, marker=SUMMARY)

    # --- the pretrained baseline, or where a run left off
    if resume_from is not None:
        state = PretrainState.from_json(checkpoints.load(resume_from))
    else:
        state = PretrainState(baseline="pretrained_head" if had_head else "random_head")
        state.before = evaluate(objective, eval_loader, accelerator)
        check_heldout(state.before, "before DAPT, of the model as loaded", 0,
                      cause=f"the model {config.model.name_or_path} or the precision (impl.mixed_precision={config.impl.mixed_precision})")
        state.before_random_head = None if had_head else state.before
        if not had_head and config.train.head_warmup_steps > 0:
            logger.info(f"random-head perplexity {state.before['perplexity']:.1f}; warming up the head for "
                        f"{config.train.head_warmup_steps} steps")
            warm_up_head(objective, train_loader, collator, accelerator, config)
            state.before, state.baseline = evaluate(objective, eval_loader, accelerator), "head_warmup"
            check_heldout(state.before, "before DAPT, after the head warm-up", 0,
                          cause=f"the head warm-up's learning rate (train.head_warmup_lr={config.train.head_warmup_lr:g}): lower it")
        elif not had_head:
            logger.warning("no MLM head and train.head_warmup_steps=0: the 'before' perplexity is that of a random "
                           "head; set train.head_warmup_steps > 0 for an honest baseline")
        metrics.log({"event": "baseline", **state.before, "baseline": state.baseline}, step=0)
        logger.info(f"held-out perplexity before DAPT: {state.before['perplexity']:.2f} ({state.baseline})")

    step = OptimizerStep(accelerator, objective, optimizer, scheduler, state, max_grad_norm=config.train.max_grad_norm,
                         max_nonfinite=config.train.max_nonfinite)
    out_of_time = train_loop(config, accelerator, objective, step, train_loader, eval_loader, collator, state, total_steps,
                             checkpoints, metrics)

    # --- the result: a model that did not diverge, written beside the old one and then switched in
    step.check_recovered()
    unwrapped = accelerator.unwrap_model(objective).model
    check_finite(unwrapped, f"after step {state.step}", step=state.step)
    after = evaluate(objective, eval_loader, accelerator)
    metrics.log({"event": "final", **after}, step=state.step)
    check_heldout(after, f"after step {state.step}", state.step)
    with final_artifacts(accelerator, output_dir, SUMMARY, checkpoints) as staging:
        unwrapped.save_pretrained(
            staging, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
            state_dict=inner_state_dict(accelerator, objective, "model."),
        )
        if accelerator.is_main_process:
            tokenizer.save_pretrained(staging)
        masker, processes, train = collator.masker, accelerator.num_processes, config.train
        summary = {
            "model_name_or_path": config.model.name_or_path, "run_name": config.run_name, "corpus": corpus,
            "block_size": config.data.block_size, "mlm_probability": config.data.mlm_probability,
            "whole_word_mask": config.data.whole_word_mask, "mask_replace_prob": masker.mask_replace_prob,
            "random_replace_prob": masker.random_replace_prob, "had_mlm_head": had_head, "baseline": state.baseline,
            "perplexity_before": state.before["perplexity"],
            "perplexity_before_random_head": (state.before_random_head or {}).get("perplexity"),
            "heldout_loss_before": state.before["heldout_loss"], "perplexity_after": after["perplexity"],
            "heldout_loss_after": after["heldout_loss"], "heldout_masked_tokens": after["heldout_masked_tokens"],
            "tokens_seen": state.tokens_seen, "steps": state.step, "total_steps": total_steps,
            "epochs": round(state.step * train.grad_accum * train.batch_size * processes / len(train_blocks), 4),
            "stopped_by_time_budget": out_of_time, "nonfinite_steps": state.nonfinite,
            "wall_time_s": round(state.wall_time_s, 2), "process_wall_time_s": round(time.time() - started, 2),
            "mixed_precision": accelerator.mixed_precision, "num_processes": processes,
            "global_batch_size": train.batch_size * processes * train.grad_accum, "config": to_dict(config),
        }
        summary["adaptation"] = new_phase(
            parent, model=config.model.name_or_path, revision=config.model.revision, output_dir=config.output_dir,
            run_name=config.run_name, sources=sources, seed=train.seed, heldout=config.data.heldout,
            **{key: corpus.get(key) for key in ("documents", "train_documents", "heldout_documents")},
            **{key: summary[key] for key in ("baseline", "had_mlm_head", "steps", "tokens_seen", "perplexity_before", "perplexity_after")},
        )
        write_json(accelerator, staging / SUMMARY, summary)
    logger.info(f"held-out perplexity {state.before['perplexity']:.2f} -> {after['perplexity']:.2f}; encoder saved to {output_dir}")
    end_run(accelerator)
    return summary


def train_loop(config: PretrainConfig, accelerator, objective, step: OptimizerStep, train_loader, eval_loader, collator,
               state: PretrainState, total_steps: int, checkpoints: CheckpointManager, metrics) -> bool:
    """Train from ``state`` to ``total_steps`` (or the wall-clock budget: returns True when it stopped the run)."""
    train = config.train
    running = RunningLoss(accelerator, state)
    tokens = torch.tensor(state.pending_tokens if accelerator.is_main_process else 0, device=accelerator.device)
    session_start, budget_s = time.time() - state.wall_time_s, train.time_budget_minutes * 60
    meter, out_of_time = ThroughputMeter(warmup=1), False
    progress = tqdm(total=total_steps, initial=state.step, desc="DAPT", disable=not accelerator.is_local_main_process)
    objective.train()
    while state.step < total_steps and not out_of_time:
        for batch in epoch_batches(accelerator, train_loader, state, collator):
            with accelerator.accumulate(objective):
                with accelerator.autocast():
                    loss = objective(**batch)[0].mean()
                stepped = step(loss)
            state.batch_in_epoch += 1
            running.add(loss)
            tokens += batch["attention_mask"].sum()  # no host sync per batch
            if stepped is None:
                continue
            progress.update(1)
            if state.step % train.log_every == 0 or state.step == total_steps:
                new_tokens = int(accelerator.reduce(tokens, "sum"))
                state.tokens_seen += new_tokens
                tokens.zero_()
                meter.update(new_tokens)
                record = {"loss": running.pop_mean(), "lr": stepped.lrs[0], "epoch": state.epoch, "tokens_seen": state.tokens_seen}
                record.update({"tokens_per_s": meter.tokens_per_s} if meter.elapsed > 0 else {})
                metrics.log(record, step=state.step)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                if budget_s:
                    over = torch.tensor(float(time.time() - session_start > budget_s), device=accelerator.device)
                    out_of_time = bool(accelerator.reduce(over, "max").item())
            if train.eval_every and state.step % train.eval_every == 0 and state.step < total_steps:
                result = evaluate(objective, eval_loader, accelerator)
                metrics.log({"event": "eval", **result}, step=state.step)
                logger.info(f"step {state.step}: held-out perplexity {result['perplexity']:.2f}")
                check_heldout(result, f"at step {state.step}", state.step)
            if config.checkpoint.every_steps and state.step % config.checkpoint.every_steps == 0 or stepped.stop_signal:
                state.wall_time_s = time.time() - session_start
                running.save_into(state)
                state.pending_tokens = int(accelerator.reduce(tokens.clone(), "sum"))
                checkpoints.save(state.step, state, metrics.size())
            if stepped.stop_signal:  # SIGTERM / SIGINT on some process: checkpointed, now stop
                raise Preempted(state.step, stepped.stop_signal)
            if state.step >= total_steps or out_of_time:
                break
        else:
            state.next_epoch()
    progress.close()
    if out_of_time:
        logger.warning(f"wall-clock budget of {train.time_budget_minutes} min reached at step {state.step}/{total_steps}")
    state.tokens_seen += int(accelerator.reduce(tokens, "sum"))
    state.wall_time_s = time.time() - session_start
    return out_of_time


def main(argv=None) -> None:
    config = parse_cli(PretrainConfig, argv, "Stage 1: domain-adaptive MLM pretraining", default_config=None)
    run_command(pretrain, config)  # a refusal: one line and exit 1; a preemption: EXIT_PREEMPTED


if __name__ == "__main__":
    main()
