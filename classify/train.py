"""Stage 2: train a linear [CLS] sentiment head (and fine-tune the encoder) on IMDb, then evaluate.

    accelerate launch classify/train.py --config configs/classify.yaml [key=value ...]
    python -m classify.train --config configs/demo/classify.yaml train.epochs=1
    dapt-classify --config ... output_dir=runs/my-classifier

Reads top to bottom: config -> Accelerator -> encoder + fresh head -> data (a stratified, seeded
validation split of IMDb train; the test sets stay untouched until the end) -> AdamW with separate
encoder / head learning rates, linear warmup then linear decay to ``min_lr`` -> epochs (validation
after each, the best epoch's weights kept, early stopping, checkpoints to resume from) -> the best
weights restored -> IMDb test and SST-2 validation -> ``model/``, ``results.json``, ``plots/``.

:func:`train_classifier` is the whole run as a function; it can be called repeatedly in one
process (the ablation does: plain vs DAPT encoder, several seeds).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a file: `accelerate launch classify/train.py`
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # classify/ itself: its model.py / data.py must not shadow other imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import load_file as safe_load_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from classify.config import BEST_METRICS, ClassifyConfig, TrainConfig
from classify.data import (
    Collator,
    DataError,
    LabelledSetConfig,
    LengthBucketBatchSampler,
    ReviewDataset,
    drop_empty,
    load_labelled,
    stratified_split,
    stratified_subset,
)
from classify.evaluate import compute_metrics, evaluate_all, load_eval_sets, make_eval_loader, predict
from classify.encoder import from_encoder
from classify.model import WEIGHTS_NAME, DistilBERTClassifier
from dapt.config import ConfigError, parse_cli, to_dict
from dapt.runtime import (
    linear_warmup_decay,
    logger,
    make_accelerator,
    make_optimizer,
    open_run_dir,
    parameter_groups,
    steps_from_budget,
    write_json,
)


def get_dataloaders(config: ClassifyConfig, tokenizer, accelerator):
    """Training and validation loaders (not yet prepared), the training batch sampler, and sizes.

    Validation is a stratified, seeded slice of the training split; ``data.train.max_samples``
    then takes a stratified subset of the rest. Test sets are not read here."""
    data, model, seed = config.data, config.model, config.train.seed
    train_set = LabelledSetConfig(**{**to_dict(data.train), "max_samples": 0})
    with accelerator.main_process_first():
        labelled = load_labelled(train_set, seed=seed)
    rest, held_out = stratified_split(labelled.labels, data.validation_size, seed)
    train, validation = labelled.select(rest), labelled.select(held_out)
    if data.train.max_samples and data.train.max_samples < len(train):
        train = train.select(stratified_subset(train.labels, data.train.max_samples, seed))
    train, dropped = drop_empty(train)
    encode = dict(tokenizer=tokenizer, max_length=model.max_length, truncation=model.truncation, head_tokens=model.head_tokens)
    train_data = ReviewDataset(train.texts, train.labels, **encode)
    val_data = ReviewDataset(validation.texts, validation.labels, **encode)

    sampler = LengthBucketBatchSampler(
        train_data.lengths, config.train.batch_size, shuffle=True, seed=seed,
        group_by_length=data.group_by_length, bucket_batches=data.bucket_batches, processes=accelerator.num_processes,
        labels=train.labels if data.balance_labels else None,
    )
    workers = config.impl.dataloader_workers
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_loader = torch.utils.data.DataLoader(
        train_data, batch_sampler=sampler, collate_fn=Collator(pad), num_workers=workers,
        pin_memory=config.impl.pin_memory and torch.cuda.is_available(),
        generator=torch.Generator(),  # iterating never draws from the global RNG (exact resume)
    )
    val_loader = make_eval_loader(val_data, tokenizer, config.train.eval_batch_size, data.group_by_length, workers)
    sizes = {
        "source": labelled.where, "rows": len(labelled), "train": len(train_data), "validation": len(val_data),
        "dropped_empty": dropped, "train_positive": sum(train.labels), "mean_tokens": round(sum(train_data.lengths) / max(1, len(train_data)), 1),
        "truncated": sum(n >= model.max_length for n in train_data.lengths),
    }
    return train_loader, val_loader, sampler, sizes


def classifier_parameter_groups(model: DistilBERTClassifier, config: TrainConfig) -> list[dict]:
    """Encoder and head each at their own LR, each split into decay / no-decay (bias, LayerNorm)."""
    groups = []
    for name, module, lr in (("encoder", model.encoder, config.encoder_lr), ("head", model.classifier, config.head_lr)):
        for group in parameter_groups(module.named_parameters(), lr, config.weight_decay):
            groups.append({**group, "name": f"{name}{'' if group['weight_decay'] else '_no_decay'}"})
    return groups


def format_epoch_line(record: dict) -> str:
    return (
        f"Epoch {record['epoch']}: Train Loss {record['train_loss']:.4f}, Train Acc {record['train_acc']:.4f} | "
        f"Val Loss {record['val_loss']:.4f}, Val Acc {record['val_acc']:.4f}"
    )


def is_better(value: Optional[float], best: Optional[float], metric: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if BEST_METRICS[metric] == "min" else value > best


def read_dapt_summary(encoder: str) -> Optional[dict]:
    path = Path(encoder) / "dapt_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_encoder(name_or_path: str) -> None:
    """A local encoder folder must hold a finished model; say so before transformers guesses."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if not looks_local:
        return  # a Hub id such as distilbert/distilbert-base-uncased
    if not path.is_dir():
        raise FileNotFoundError(f"model.encoder: {name_or_path} not found (run stage 1 first, or set model.encoder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.encoder: {name_or_path} has no config.json: not a finished stage-1 output or encoder folder")


def train_classifier(config: ClassifyConfig) -> dict:
    """Run stage 2 as configured; returns the results also written to ``results.json``."""
    output_dir = Path(config.output_dir)
    # make_accelerator starts a fresh AcceleratorState: repeated runs in one process work
    accelerator = make_accelerator(config.impl, output_dir, config.train.grad_accum, config.tensorboard)
    if config.tensorboard:
        accelerator.init_trackers(config.run_name)
    set_seed(config.train.seed)  # the head's initialisation and dropout
    logger.info(f"processes: {accelerator.num_processes}, device: {accelerator.device}, precision: {accelerator.mixed_precision}")
    hp, mc = config.train, config.model

    # --- model and data
    check_encoder(mc.encoder)
    tokenizer = AutoTokenizer.from_pretrained(mc.encoder, revision=mc.revision)
    model = from_encoder(
        mc.encoder, dropout=mc.dropout, max_length=mc.max_length, truncation=mc.truncation,
        head_tokens=mc.head_tokens, revision=mc.revision, attn_implementation=config.impl.attn_implementation,
    )
    train_loader, val_loader, train_sampler, sizes = get_dataloaders(config, tokenizer, accelerator)
    logger.info(f"data: {sizes}")
    # read now, not after the last epoch: a missing or unreachable evaluation set fails before training
    eval_data = load_eval_sets(config.data.eval, accelerator, seed=hp.seed)

    # --- optimizer, schedule, checkpoints
    model.to(accelerator.device)
    optimizer = make_optimizer(classifier_parameter_groups(model, hp), fused=config.impl.fused_adamw)
    if config.impl.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    total_steps = steps_from_budget(len(train_loader), hp.grad_accum, hp.epochs, 0)
    warmup_steps = round(hp.warmup_ratio * total_steps)
    scheduler = linear_warmup_decay(optimizer.optimizer, warmup_steps, total_steps, hp.min_lr)
    accelerator.register_for_checkpointing(scheduler)
    group_names = [group["name"] for group in optimizer.param_groups]
    checkpoints, resume_from, metrics = open_run_dir(accelerator, output_dir, config, config.checkpoint)
    best_dir = output_dir / "checkpoints" / "best"
    if resume_from is not None:
        state = checkpoints.load(resume_from)
    else:
        state = {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "best_epoch": None, "best_value": None,
            "bad_epochs": 0, "stopped_early": False, "train_sums": [0.0, 0.0, 0.0], "wall_time_s": 0.0,
            "train_time_s": 0.0, "train_samples": 0, "nonfinite": 0,
        }
        if accelerator.is_main_process:
            shutil.rmtree(best_dir, ignore_errors=True)  # a previous run's
    # the epoch's running sums (loss, correct, rows); a checkpoint holds the all-process totals
    sums = torch.tensor(state["train_sums"] if accelerator.is_main_process else [0.0] * 3, dtype=torch.float64, device=accelerator.device)
    logger.info(f"{total_steps} optimizer steps ({len(train_loader)} batches/epoch/process, {warmup_steps} warmup), "
                f"global batch {hp.batch_size * accelerator.num_processes * hp.grad_accum}")

    # --- training
    step = state["step"]
    session_start = time.time() - state["wall_time_s"]

    def save_checkpoint():
        state["train_sums"] = accelerator.reduce(sums.clone(), "sum").tolist()
        state["wall_time_s"] = time.time() - session_start
        checkpoints.save(step, state)

    running_loss = torch.zeros((), device=accelerator.device)
    running_batches = 0
    progress = tqdm(total=total_steps, initial=step, desc="classifier", disable=not accelerator.is_local_main_process)
    while state["epoch"] < hp.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        train_sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        skip = state["batch_in_epoch"]
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        model.train()
        epoch_started = time.time()
        for batch in loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
                loss = losses.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    lrs = [group["lr"] for group in optimizer.param_groups]  # the LRs of this update
                    max_norm = hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if accelerator.mixed_precision != "fp16" and not torch.isfinite(grad_norm):
                        state["nonfinite"] += 1  # the fp16 scaler skips such steps by itself
                        logger.warning(f"step {step + 1}: non-finite gradient norm, update skipped")
                        if state["nonfinite"] > hp.max_nonfinite:
                            raise FloatingPointError(f"{state['nonfinite']} non-finite updates: stopping (lower the LRs?)")
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                correct = (logits.argmax(dim=-1) == batch["labels"]).sum()
                sums += torch.stack([losses.detach().sum().double(), correct.double(), torch.tensor(float(len(losses)), dtype=torch.float64, device=sums.device)])
            running_loss += loss.detach().float()
            running_batches += 1
            state["batch_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            progress.update(1)
            if step % hp.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(running_loss / running_batches, "mean").item()
                record = {"loss": mean_loss, "grad_norm": float(grad_norm), "epoch": round(epoch + state["batch_in_epoch"] / len(train_loader), 4)}
                record.update({f"lr_{name}": lr for name, lr in zip(group_names, lrs)})
                metrics.log(record, step=step)
                progress.set_postfix(loss=f"{mean_loss:.3f}")
                running_loss.zero_()
                running_batches = 0
            if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                state["train_time_s"] += time.time() - epoch_started
                save_checkpoint()
                epoch_started = time.time()
        state["train_time_s"] += time.time() - epoch_started

        # --- end of epoch: training totals over all processes, validation, best weights
        loss_sum, correct, rows = accelerator.reduce(sums, "sum").tolist()
        sums.zero_()
        state["train_samples"] += int(rows)
        val = predict(model, val_loader, accelerator)
        val_metrics = compute_metrics(val.label, val.pred, val.prob, val.loss)
        record = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(rows, 1), "train_acc": correct / max(rows, 1),
            "val_loss": val_metrics["loss"], "val_acc": val_metrics["accuracy"], "val_f1": val_metrics["f1"],
            "val_roc_auc": val_metrics["roc_auc"],
        }
        state["history"].append(record)
        if accelerator.is_main_process:
            tqdm.write(format_epoch_line(record))
        metrics.log({"event": "epoch", **record}, step=step)
        if is_better(record[hp.best_metric], state["best_value"], hp.best_metric):
            state.update(best_epoch=epoch + 1, best_value=record[hp.best_metric], bad_epochs=0)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(best_dir)
            accelerator.wait_for_everyone()
        else:
            state["bad_epochs"] += 1
            patience = hp.early_stopping_patience
            if patience and state["bad_epochs"] >= patience and epoch + 1 < hp.epochs:
                state["stopped_early"] = True
                logger.info(f"early stopping: no {hp.best_metric} improvement for {patience} epoch(s); best epoch {state['best_epoch']}")
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
        if config.checkpoint.every_epoch:
            save_checkpoint()
    progress.close()
    state["wall_time_s"] = time.time() - session_start

    # --- the best epoch's weights, evaluated on the held-out test sets
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if state["best_epoch"] is not None and state["best_epoch"] != len(state["history"]):
        if (best_dir / WEIGHTS_NAME).is_file():
            logger.info(f"restoring the weights of epoch {state['best_epoch']} ({hp.best_metric} {state['best_value']:.4f})")
            unwrapped.load_state_dict(safe_load_file(str(best_dir / WEIGHTS_NAME)))  # copied onto the device
        else:
            logger.warning(f"{best_dir / WEIGHTS_NAME} is missing: keeping the last epoch's weights, not epoch {state['best_epoch']}'s")
    plots_dir = output_dir / "plots"
    evaluation, plots = evaluate_all(
        model, tokenizer, config.data.eval, eval_data, unwrapped.settings, accelerator, batch_size=hp.eval_batch_size,
        output_dir=output_dir, group_by_length=config.data.group_by_length, workers=config.impl.dataloader_workers,
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir / "model", tokenizer)
        from classify.plots import training_curves_png

        curves = training_curves_png(state["history"], output_dir / "metrics.jsonl", plots_dir / "training_curves.png")
        plots += [curves] if curves else []

    results = {
        "run_name": config.run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": mc.encoder,
        "dapt": read_dapt_summary(mc.encoder),
        "hyperparameters": {
            "encoder_lr": hp.encoder_lr, "head_lr": hp.head_lr, "min_lr": hp.min_lr, "warmup_ratio": hp.warmup_ratio,
            "schedule": "linear", "epochs": hp.epochs, "batch_size": hp.batch_size, "grad_accum": hp.grad_accum,
            "weight_decay": hp.weight_decay, "mixed_precision": accelerator.mixed_precision, "max_length": mc.max_length,
            "truncation": mc.truncation, "head_tokens": mc.head_tokens, "dropout": mc.dropout, "seed": hp.seed,
            "num_processes": accelerator.num_processes,
        },
        "training": {
            "epochs": state["history"],
            "best_epoch": state["best_epoch"],
            "best_metric": hp.best_metric,
            "best_value": state["best_value"],
            "stopped_early": state["stopped_early"],
            "wall_time_s": round(state["wall_time_s"], 2),
            "train_samples_per_s": round(state["train_samples"] / state["train_time_s"], 2) if state["train_time_s"] else None,
        },
        "evaluation": evaluation,
        "plots": sorted(p.relative_to(output_dir).as_posix() for p in plots),
    }
    write_json(accelerator, output_dir / "results.json", results)
    metrics.log({"event": "final", **{f"{k}_{m}": v[m] for k, v in evaluation.items() for m in ("accuracy", "loss")}}, step=step)
    if config.push_to_hub and accelerator.is_main_process:
        from classify.publish import publish_run

        pushed = publish_run(output_dir, config.hub_repo_id, private=config.hub_private)
        logger.info(f"pushed {config.hub_repo_id} at commit {pushed['commit']}")
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group that a
        tracker.finish()  # following run in the same processes (dapt-ablate) still needs
    return results


def main(argv=None) -> None:
    config = parse_cli(ClassifyConfig, argv, "Stage 2: train and evaluate the sentiment classifier", default_config=None)
    try:
        results = train_classifier(config)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        logger.error(str(error))
        raise SystemExit(f"error: {error}") from None
    for name, block in results["evaluation"].items():
        print(f"{name}: accuracy {block['accuracy']:.4f}, F1 {block['f1']:.4f}, n {block['n']}")
    print(f"results: {Path(config.output_dir) / 'results.json'}")


if __name__ == "__main__":
    main()
