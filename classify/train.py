"""Stage 2: train a linear [CLS] sentiment head (and fine-tune the encoder) on IMDb, then evaluate.

    accelerate launch classify/train.py --config configs/classify.yaml [key=value ...]
    python -m classify.train --config configs/demo/classify.yaml train.epochs=1
    dapt-classify --config ... output_dir=runs/my-classifier

Reads top to bottom: config -> Accelerator -> encoder + fresh head -> data (a stratified, seeded
validation split of IMDb train; the test sets stay untouched until the end) -> AdamW with separate
encoder / head learning rates, linear warmup then linear decay to ``min_lr`` -> epochs (validation
after each, the best epoch's weights kept, early stopping, checkpoints to resume from) -> the best
weights restored -> IMDb test and SST-2 validation -> ``model/``, ``results.json``, ``plots/``.

:func:`train_classifier` is the whole run as a function, once per process (``experiments/ablation``
runs each training as a command of its own).
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a file (`accelerate launch classify/train.py`): as the module
    import runpy  # (the project installed, `pip install -e .`, or on PYTHONPATH)

    runpy.run_module("classify.train", run_name="__main__", alter_sys=True)
    raise SystemExit

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from classify.config import BEST_METRICS, RESUMABLE_KEYS, ClassifyConfig, TrainConfig
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
    training_truncation,
)
from classify.evaluate import (compute_metrics, evaluate_all, fit_temperature_on, load_eval_sets, make_eval_loader,
                               predict, ranking_score)
from classify.labels import check_every_class_trained
from classify.metrics import macro_f1
from classify.plots import training_curves_png
from classify.results import EXAMPLES, run_results, select_examples, write_examples
from classify.encoder import from_encoder
from classify.leakage import check_pretraining_overlap
from classify.model import DaptClassifier
from dapt.core.config import to_dict
from dapt.core.hub import looks_local
from dapt.core.lineage import read_summary
from dapt.core.checkpoint import CheckpointManager, refuse_sharded
from dapt.core.guard import guarded_run
from dapt.core.loop import epoch_batches
from dapt.core.rundir import final_artifacts, open_run
from dapt.core.signals import Preempted
from dapt.core.state import RunningLoss, TrainState
from dapt.core.step import OptimizerStep, check_finite, check_loss
from dapt.core.runtime import (
    end_run,
    linear_warmup_decay,
    logger,
    make_optimizer,
    parameter_groups,
    raise_config,
    report_weights_format,
    steps_from_budget,
    write_json,
)

RESULTS = "results.json"  # written last: its presence marks a finished run
BEST = "best"  # checkpoints/best/: the best epoch's weights so far (CheckpointManager.save_weights)


def get_dataloaders(config: ClassifyConfig, tokenizer, accelerator):
    """Training and validation loaders (not yet prepared), the training batch sampler, the task's
    classes (:class:`~classify.labels.LabelSpace`, decided by the training split and
    ``data.labels``), the validation texts and labels, and sizes.

    Validation is a stratified, seeded slice of the training split; ``data.train.max_samples``
    then takes a stratified subset of the rest. Test sets are not read here."""
    data, model, seed = config.data, config.model, config.train.seed
    train_set = LabelledSetConfig(**{**to_dict(data.train), "max_samples": 0})
    with accelerator.main_process_first():
        labelled = load_labelled(train_set, seed=seed, declared=data.labels)
    space = labelled.space
    if config.train.best_metric == "val_f1" and space.num_labels > 2:
        raise_config("train.best_metric", "val_f1", f"val_macro_f1 (or val_acc, val_roc_auc, val_loss) for a task of "
                     f"{space.num_labels} classes: val_f1 is the positive class's F1 of a binary task")
    rest, held_out = stratified_split(labelled.labels, data.validation_size, seed)
    train, validation = labelled.select(rest), labelled.select(held_out)
    if data.train.max_samples and data.train.max_samples < len(train):
        train = train.select(stratified_subset(train.labels, data.train.max_samples, seed))
    train, dropped = drop_empty(train)
    check_trainable(train, labelled.where, dropped, config.train.batch_size, accelerator.num_processes)
    encode = dict(tokenizer=tokenizer, max_length=model.max_length, truncation=model.truncation, head_tokens=model.head_tokens, window_stride=model.window_stride)
    train_data = ReviewDataset(train.texts, train.labels, **{**encode, "truncation": training_truncation(model.truncation)})
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
        "dataset": data.train.name or data.train.path, "split": data.train.split, "source": labelled.where,
        "rows": len(labelled), "train": len(train_data), "validation": len(val_data), "dropped_empty": dropped,
        "train_per_class": dict(zip(space.names, np.bincount(train.labels, minlength=space.num_labels).tolist())),
        "mean_tokens": round(sum(train_data.lengths) / max(1, len(train_data)), 1),
        "truncated": sum(n >= model.max_length for n in train_data.lengths),
    }
    return train_loader, val_loader, sampler, space, validation, sizes


def check_trainable(train, where: str, dropped: int, batch_size: int, processes: int) -> None:
    """Enough usable training rows for every process, and every class, or a DataError."""
    if len(train) < processes:
        raise DataError(f"{where}: {len(train)} usable training rows ({dropped} empty texts dropped): need at least one "
                        f"per process ({processes}); check data.train.text_column and data.train.max_samples")
    check_every_class_trained(train.labels, train.space, where)
    if len(train) < batch_size * processes:
        logger.warning(f"{where}: {len(train)} training rows fill less than one global batch of {batch_size * processes}")


def classifier_parameter_groups(model: DaptClassifier, config: TrainConfig) -> list[dict]:
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


def check_encoder(name_or_path: str) -> None:
    """A local encoder folder must hold a finished model; say so before transformers guesses."""
    path = Path(name_or_path).expanduser()
    if not looks_local(name_or_path):
        return  # a Hub id such as distilbert/distilbert-base-uncased
    if not path.is_dir():
        raise FileNotFoundError(f"model.encoder: {name_or_path} not found (run stage 1 first, or set model.encoder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.encoder: {name_or_path} has no config.json: not a finished stage-1 output or encoder folder")


def train_classifier(config: ClassifyConfig) -> dict:
    """Run stage 2 as configured; returns the results also written to ``results.json`` (the folder
    checked and locked, signals handled, failures cleaned up: :func:`dapt.core.guard.guarded_run`)."""
    with guarded_run(config, marker=RESULTS) as accelerator:
        return _train_classifier(config, accelerator)


def _train_classifier(config: ClassifyConfig, accelerator) -> dict:
    output_dir = Path(config.output_dir)
    refuse_sharded(accelerator, config.checkpoint)  # FSDP / DeepSpeed: before the data is read
    set_seed(config.train.seed)  # the head's initialisation and dropout
    logger.info(f"processes: {accelerator.num_processes}, device: {accelerator.device}, precision: {accelerator.mixed_precision}")
    training, model_config = config.train, config.model

    # --- model and data
    check_encoder(model_config.encoder)
    # every stage-1 phase behind the encoder: no evaluation set may be one's text (before any data is read)
    leakage = check_pretraining_overlap(config.data.eval, read_summary(model_config.encoder), config.data.allow_pretraining_overlap,
                                        model_config.encoder)
    report_weights_format(model_config.encoder)
    tokenizer = AutoTokenizer.from_pretrained(model_config.encoder, revision=model_config.revision)
    positions = getattr(AutoConfig.from_pretrained(model_config.encoder, revision=model_config.revision), "max_position_embeddings", None)
    if positions is not None and model_config.max_length > positions:
        raise_config("model.max_length", model_config.max_length, f"at most {positions}, the positions of {model_config.encoder}")
    train_loader, val_loader, train_sampler, space, validation, sizes = get_dataloaders(config, tokenizer, accelerator)
    logger.info(f"classes: {space.num_labels} ({', '.join(space.names)}; from {space.source}); data: {sizes}")
    # read now, not after the last epoch: a missing or unreachable evaluation set, or a label the
    # task does not have, fails before training
    eval_data = load_eval_sets(config.data.eval, accelerator, seed=training.seed, space=space)
    model = from_encoder(
        model_config.encoder, dropout=model_config.dropout, max_length=model_config.max_length, truncation=model_config.truncation, head_tokens=model_config.head_tokens,
        window_stride=model_config.window_stride, id2label=space.id2label, revision=model_config.revision,
        attn_implementation=config.impl.attn_implementation,
    )

    # --- optimizer, schedule, checkpoints
    model.to(accelerator.device)
    optimizer = make_optimizer(classifier_parameter_groups(model, training), fused=config.impl.fused_adamw)
    if config.impl.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    total_steps = steps_from_budget(len(train_loader), training.grad_accum, training.epochs, 0)
    warmup_steps = round(training.warmup_ratio * total_steps)
    scheduler = linear_warmup_decay(optimizer.optimizer, warmup_steps, total_steps, training.min_lr)
    checkpoints, resume_from, metrics = open_run(accelerator, config, model=model, optimizer=optimizer, scheduler=scheduler,
                                                 resumable_keys=RESUMABLE_KEYS, marker=RESULTS)
    if resume_from is not None:
        state = ClassifyState.from_json(checkpoints.load(resume_from))
    else:
        state = ClassifyState()
    logger.info(f"{total_steps} optimizer steps ({len(train_loader)} batches/epoch/process, {warmup_steps} warmup), "
                f"global batch {training.batch_size * accelerator.num_processes * training.grad_accum}")
    step = OptimizerStep(accelerator, model, optimizer, scheduler, state, max_grad_norm=training.max_grad_norm, max_nonfinite=training.max_nonfinite)
    train_loop(config, accelerator, model, step, train_loader, val_loader, train_sampler, state, total_steps, checkpoints, metrics)
    step.check_recovered()  # a run must not end on skipped non-finite updates

    # --- the best epoch's weights, evaluated on the held-out test sets
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if state.best_epoch is not None and state.best_epoch != len(state.history):
        best = checkpoints.load_weights(BEST)  # verified against the hash taken when written
        if best is not None:
            logger.info(f"restoring the weights of epoch {state.best_epoch} ({training.best_metric} {state.best_value:.4f})")
            unwrapped.load_state_dict(best)  # copied onto the device
        else:
            logger.warning(f"keeping the last epoch's weights, not epoch {state.best_epoch}'s")
    # stored in the model's config, saved with it
    calibration, validated = fit_temperature_on(model, val_loader, accelerator, with_predictions=True)
    # the final artifacts go to a staging folder and replace a previous run's only when complete
    with final_artifacts(accelerator, output_dir, RESULTS, checkpoints) as staging:
        evaluation, plots = evaluate_all(
            model, tokenizer, config.data.eval, eval_data, unwrapped.settings, accelerator, batch_size=training.eval_batch_size,
            output_dir=staging, group_by_length=config.data.group_by_length, workers=config.impl.dataloader_workers,
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped.save_pretrained(staging / "model", tokenizer)
            write_examples(staging / EXAMPLES, select_examples(validation.texts, validated, space.names))
            curves = training_curves_png(state.history, output_dir / "metrics.jsonl", staging / "plots" / "training_curves.png",
                                         config.run_name)
            plots += [curves] if curves else []
        results = run_results(config, accelerator, state, space=space, data=sizes, calibration=calibration, evaluation=evaluation,
                              plots=[p.relative_to(staging).as_posix() for p in plots], leakage=leakage)
        write_json(accelerator, staging / RESULTS, results)
    metrics.log({"event": "final", **{f"{k}_{m}": v[m] for k, v in evaluation.items() for m in ("accuracy", "loss")}}, step=state.step)
    end_run(accelerator)  # the command publishes afterwards (push_to_hub: classify.release.command)
    return results


@dataclass
class ClassifyState(TrainState):
    """Stage 2's loop state (a checkpoint's ``trainer_state.json``)."""

    history: list = field(default_factory=list)  # one record per finished epoch
    best_epoch: Optional[int] = None
    best_value: Optional[float] = None
    bad_epochs: int = 0
    stopped_early: bool = False
    train_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # this epoch's loss, correct, rows (all processes)
    train_time_s: float = 0.0
    train_samples: int = 0


def train_loop(config: ClassifyConfig, accelerator, model, step: OptimizerStep, train_loader, val_loader, train_sampler,
               state: ClassifyState, total_steps: int, checkpoints: CheckpointManager, metrics) -> None:
    """Epochs from ``state`` on: batches through the shared step, validation after each epoch."""
    training, group_names = config.train, [group["name"] for group in step.optimizer.param_groups]
    running = RunningLoss(accelerator, state)
    sums = torch.tensor(state.train_sums if accelerator.is_main_process else [0.0] * 3, dtype=torch.float64, device=accelerator.device)
    session_start = time.time() - state.wall_time_s

    def save_checkpoint():
        state.train_sums = accelerator.reduce(sums.clone(), "sum").tolist()
        running.save_into(state)
        state.wall_time_s = time.time() - session_start
        checkpoints.save(state.step, state, metrics.size())

    progress = tqdm(total=total_steps, initial=state.step, desc="classifier", disable=not accelerator.is_local_main_process)
    while state.epoch < training.epochs and not state.stopped_early:
        model.train()
        epoch_started = time.time()
        for batch in epoch_batches(accelerator, train_loader, state, train_sampler):
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
                stepped = step(losses.mean())
            with torch.no_grad():
                correct = (logits.argmax(dim=-1) == batch["labels"]).sum()
                sums += torch.stack([losses.sum().double(), correct.double(), sums.new_tensor(float(len(losses)))])
                running.add(losses.mean())
            state.batch_in_epoch += 1
            if stepped is None:
                continue
            progress.update(1)
            if state.step % training.log_every == 0 or state.step == total_steps:
                record = {"loss": running.pop_mean(), "grad_norm": float(stepped.grad_norm),
                          "epoch": round(state.epoch + state.batch_in_epoch / len(train_loader), 4)}
                record.update({f"lr_{name}": lr for name, lr in zip(group_names, stepped.lrs)})
                metrics.log(record, step=state.step)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
            if config.checkpoint.every_steps and state.step % config.checkpoint.every_steps == 0 or stepped.stop_signal:
                state.train_time_s += time.time() - epoch_started
                save_checkpoint()
                epoch_started = time.time()
            if stepped.stop_signal:  # SIGTERM / SIGINT on some process: checkpointed, now stop
                raise Preempted(state.step, stepped.stop_signal)
        state.train_time_s += time.time() - epoch_started
        end_of_epoch(config, accelerator, model, val_loader, state, sums, checkpoints, metrics)
        if config.checkpoint.every_epoch:
            save_checkpoint()
    progress.close()
    state.wall_time_s = time.time() - session_start


def end_of_epoch(config: ClassifyConfig, accelerator, model, val_loader, state: ClassifyState, sums, checkpoints, metrics) -> None:
    """Finite weights, the epoch's training totals, validation, the best weights so far, early stopping."""
    training, epoch = config.train, state.epoch + 1
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    check_finite(unwrapped, f"after epoch {epoch} (step {state.step})", checkpoints.latest_name())
    loss_sum, correct, rows = accelerator.reduce(sums, "sum").tolist()
    sums.zero_()
    state.train_samples += int(rows)
    val = predict(model, val_loader, accelerator)
    check_loss("validation loss", val.loss, f"after epoch {epoch} (step {state.step})", state.step)
    num_labels = val.logits.shape[1]
    val_metrics = compute_metrics(val.label, val.pred, ranking_score(val), val.loss, [str(c) for c in range(num_labels)])
    record = {
        "epoch": epoch, "train_loss": loss_sum / max(rows, 1), "train_acc": correct / max(rows, 1),
        "val_loss": val_metrics["loss"], "val_acc": val_metrics["accuracy"],
        **({"val_f1": val_metrics["f1"]} if num_labels == 2 else {}),
        "val_macro_f1": macro_f1(val.label, val.pred, num_labels), "val_roc_auc": val_metrics["roc_auc"],
    }
    state.history.append(record)
    if accelerator.is_main_process:
        tqdm.write(format_epoch_line(record))
    metrics.log({"event": "epoch", **record}, step=state.step)
    if is_better(record[training.best_metric], state.best_value, training.best_metric):
        state.best_epoch, state.best_value, state.bad_epochs = epoch, record[training.best_metric], 0
        checkpoints.save_weights(BEST, {"epoch": epoch, "step": state.step, "metric": training.best_metric,
                                        "value": state.best_value})
    else:
        state.bad_epochs += 1
        patience = training.early_stopping_patience
        if patience and state.bad_epochs >= patience and epoch < training.epochs:
            state.stopped_early = True
            logger.info(f"early stopping: no {training.best_metric} improvement for {patience} epoch(s); best epoch {state.best_epoch}")
    state.next_epoch()


def main(argv=None) -> None:
    """The stage-2 command: :func:`classify.release.command.main`, which may publish at the end and
    so lives with distribution; reached by name (training never imports distribution)."""
    importlib.import_module("classify.release.command").main(argv)


if __name__ == "__main__":
    main()
