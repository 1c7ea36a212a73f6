"""The training sides of ``benchmarks/bench.py``: the baseline, the stock Hugging Face ``Trainer``
(only counting the tokens of each batch), and the project's side, built from the product's own
pieces - stage 1's ``MaskedLMObjective``, ``MLMCollator``, ``TrainConfig``, optimizer and schedule;
stage 2's ``DaptClassifier``, parameter groups, sampler and collator - and stepped by the
product's own optimizer step, ``dapt.core.step.OptimizerStep``, set up by :func:`product_step` as
``dapt/pretrain.py`` and ``classify/train.py`` set it up; then each stage's two sides, one timed
run each.
"""

from __future__ import annotations

import copy
import tempfile

import torch

from dapt.core.runtime import forget_accelerate_state
from benchmarks.bench_measure import StepTimer, peak_memory_gib
from benchmarks.bench_workload import build_mlm_model


# --------------------------------------------------------------------------------------------
# The two loops: the stock Trainer and the project's step


def make_trainer_classes():
    from transformers import Trainer, TrainerCallback

    class TimingCallback(TrainerCallback):
        def __init__(self, timer: StepTimer):
            self.timer = timer

        def on_step_end(self, args, state, control, **kwargs):
            self.timer.step_end()

    class CountingTrainer(Trainer):
        """The stock Trainer; only counts the non-pad tokens of each batch it trains on."""

        bench_timer: StepTimer = None
        bench_mlm: bool = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = inputs["input_ids"].ne(self.bench_pad_id)
            self.bench_timer.count(mask, inputs.get("labels"), mlm=self.bench_mlm)
            return super().training_step(model, inputs, num_items_in_batch)

    return TimingCallback, CountingTrainer


def training_arguments(args, batch_size: int, output_dir: str):
    from transformers import TrainingArguments

    p = args.baseline_precision
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=args.warmup + args.steps,
        learning_rate=5e-5, weight_decay=0.01, fp16=p == "fp16", bf16=p == "bf16", use_cpu=args.device == "cpu",
        report_to=[], save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=args.seed,
        # everything else at the Trainer's defaults: random sampler, 0 workers, pinned memory,
        # the default optimizer, logging every 500 steps
    )


def run_trainer(args, model, dataset, collator, tokenizer, batch_size: int, params: dict, mlm: bool) -> dict:
    """One baseline run: the stock ``Trainer.train()`` for ``warmup + steps`` optimizer steps."""
    from transformers.trainer_callback import PrinterCallback

    forget_accelerate_state()
    TimingCallback, CountingTrainer = make_trainer_classes()
    timer = StepTimer(args.device, args.warmup, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = CountingTrainer(model=model, args=training_arguments(args, batch_size, output_dir),
                                  train_dataset=dataset, data_collator=collator, callbacks=[TimingCallback(timer)])
        trainer.bench_timer, trainer.bench_mlm, trainer.bench_pad_id = timer, mlm, tokenizer.pad_token_id
        trainer.remove_callback(PrinterCallback)  # keep the terminal for the table
        trainer.train()
        result = timer.result(args.warmup, params, args.peak_tflops)
        result.update(peak_memory_gib=peak_memory_gib(args.device), optimizer=getattr(trainer.args.optim, "value", str(trainer.args.optim)),
                      precision=args.baseline_precision,
                      attn_implementation=getattr(model.config, "_attn_implementation", None))
        trainer.accelerator.free_memory()
    return result


def cycle(loader, on_epoch=None):
    epoch = 0
    while True:
        if on_epoch:
            on_epoch(epoch)
        yield from loader
        epoch += 1


def product_step(args, model, optimizer, training):
    """The product's optimizer step, set up as both stages set it up: ``make_accelerator`` (the
    bench's precision and device), model and optimizer through ``accelerator.prepare``, the linear
    warmup/decay schedule on the prepared optimizer, a fresh ``TrainState``, and
    :class:`~dapt.core.step.OptimizerStep` with the stage's ``train`` keys ``training`` (warmup ratio,
    ``min_lr``, ``max_grad_norm``, ``max_nonfinite``): clip, skip a non-finite update, step,
    schedule, zero. Returns the accelerator, the prepared model and the step."""
    from dapt.core.runtime import ImplConfig, linear_warmup_decay, make_accelerator
    from dapt.core.state import TrainState
    from dapt.core.step import OptimizerStep

    forget_accelerate_state()
    impl = ImplConfig(mixed_precision="bf16" if args.precision == "bf16" else "no", cpu=args.device == "cpu",
                      tf32=args.device == "cuda")
    accelerator = make_accelerator(impl, tempfile.gettempdir())  # no tracker: nothing is written there
    model, optimizer = accelerator.prepare(model, optimizer)
    total = args.warmup + args.steps
    scheduler = linear_warmup_decay(optimizer.optimizer, round(training.warmup_ratio * total), total, training.min_lr)
    step = OptimizerStep(accelerator, model, optimizer, scheduler, TrainState(), max_grad_norm=training.max_grad_norm,
                         max_nonfinite=training.max_nonfinite)
    return accelerator, model, step


def run_project(args, accelerator, model, step, model_call, loader, loss_of, params, mlm: bool,
                masked_only: bool = False, on_epoch=None) -> dict:
    """``warmup + steps`` batches as the stages' loops run them: forward under the accelerator's
    autocast inside ``accelerator.accumulate``, then the product's step."""
    device = accelerator.device
    timer = StepTimer(args.device, args.warmup, args.warmup + args.steps)
    batches = cycle(loader, on_epoch)
    non_blocking = args.device == "cuda"
    for _ in range(args.warmup + args.steps):
        batch = next(batches)
        timer.count(batch["attention_mask"], batch.get("labels"), mlm=mlm)  # CPU tensors: no sync
        batch = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        with accelerator.accumulate(model):
            with accelerator.autocast():
                output = model_call(batch)
            step(loss_of(output, batch))
        timer.step_end()
    return timer.result(args.warmup, params, args.peak_tflops, masked_only=masked_only)


def loader_kwargs(args) -> dict:
    kwargs = {"num_workers": args.workers, "pin_memory": args.pin_memory and args.device == "cuda"}
    if args.workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return kwargs


# --------------------------------------------------------------------------------------------
# Stage 1: MLM


def mlm_baseline(args, tokenizer, config, blocks: list[list[int]], params: dict) -> dict:
    import datasets
    from transformers import DataCollatorForLanguageModeling

    model = build_mlm_model(config, args.seed)  # the library's default attention, as a notebook gets it
    dataset = datasets.Dataset.from_dict({"input_ids": blocks})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    result = run_trainer(args, model, dataset, collator, tokenizer, args.baseline_batch, params, mlm=True)
    result.update(block=args.baseline_block, batch=args.baseline_batch, logits="full vocabulary")
    return result


def mlm_project(args, tokenizer, config, blocks: list[list[int]], params: dict) -> dict:
    from torch.utils.data import DataLoader

    from dapt.masking import MLMCollator
    from dapt.modeling import MaskedLMObjective
    from dapt.pretrain import TrainConfig
    from dapt.core.runtime import make_optimizer, parameter_groups

    device = torch.device(args.device)
    model = build_mlm_model(config, args.seed, attn_implementation="sdpa").to(device)
    objective = MaskedLMObjective(model, masked_only=args.masked_only)
    training = TrainConfig(batch_size=args.mlm_batch)  # stage 1's defaults: LR, weight decay, schedule, clipping
    optimizer = make_optimizer(parameter_groups(model.named_parameters(), training.lr, training.weight_decay), fused=args.fused_adamw)
    forward = torch.compile(objective) if args.compile else objective  # compiled before prepare, as stage 1 does
    accelerator, forward, step = product_step(args, forward, optimizer, training)
    collator = MLMCollator(tokenizer, seed=args.seed)
    dataset = [{"input_ids": block, "index": i} for i, block in enumerate(blocks)]
    loader = DataLoader(dataset, batch_size=args.mlm_batch, shuffle=True, drop_last=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs(args))
    forward.train()
    result = run_project(
        args, accelerator, forward, step, lambda b: forward(b["input_ids"], b["attention_mask"], b["labels"]), loader,
        lambda out, b: out[0].mean(), params, mlm=True, masked_only=args.masked_only, on_epoch=collator.set_epoch,
    )
    result.update(peak_memory_gib=peak_memory_gib(args.device), block=args.mlm_block, batch=args.mlm_batch,
                  precision=args.precision, compile=args.compile, attn_implementation="sdpa",
                  logits="masked positions only" if args.masked_only else "full vocabulary",
                  optimizer="AdamW fused" if getattr(optimizer, "defaults", {}).get("fused") else "AdamW")
    return result


# --------------------------------------------------------------------------------------------
# Stage 2: classifier


def classify_baseline(args, tokenizer, config, reviews: list[list[int]], labels: list[int], params: dict) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    config = copy.deepcopy(config)
    config.num_labels = 2
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_config(config)
    dataset = datasets.Dataset.from_dict({"input_ids": reviews, "attention_mask": [[1] * len(r) for r in reviews],
                                          "label": labels})
    collator = DataCollatorWithPadding(tokenizer)
    result = run_trainer(args, model, dataset, collator, tokenizer, args.classify_batch, params, mlm=False)
    result.update(batch=args.classify_batch, batching="random order, dynamic padding")
    return result


def classify_project(args, tokenizer, config, reviews: list[list[int]], labels: list[int], params: dict) -> dict:
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    from classify.data import Collator, LengthBucketBatchSampler
    from classify.model import DaptClassifierConfig, DaptClassifier
    from classify.config import TrainConfig
    from classify.train import classifier_parameter_groups
    from dapt.core.runtime import make_optimizer

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = DaptClassifier(DaptClassifierConfig(encoder_config=config.to_dict())).to(device)
    training = TrainConfig(batch_size=args.classify_batch)
    optimizer = make_optimizer(classifier_parameter_groups(model, training), fused=args.fused_adamw)
    forward = torch.compile(model) if args.compile else model  # compiled before prepare, as classify/train.py does
    accelerator, forward, step = product_step(args, forward, optimizer, training)
    sampler = LengthBucketBatchSampler([len(r) for r in reviews], args.classify_batch, shuffle=True, seed=args.seed,
                                       group_by_length=args.group_by_length)
    dataset = [{"input_ids": r, "label": y, "index": i} for i, (r, y) in enumerate(zip(reviews, labels))]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(tokenizer.pad_token_id, args.pad_multiple),
                        **loader_kwargs(args))
    forward.train()
    result = run_project(
        args, accelerator, forward, step, lambda b: forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
        loader, lambda logits, b: F.cross_entropy(logits.float(), b["labels"]), params, mlm=False, on_epoch=sampler.set_epoch,
    )
    result.update(peak_memory_gib=peak_memory_gib(args.device), batch=args.classify_batch, precision=args.precision,
                  compile=args.compile, attn_implementation="sdpa",
                  batching=(f"shuffled length buckets, pad to {args.pad_multiple}" if args.group_by_length
                            else f"random order, pad to {args.pad_multiple}"))
    return result
