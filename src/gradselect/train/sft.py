"""Supervised fine-tuning on HF Trainer: one entry point for every training run.

Meta-training (all sources), trust-check fine-tunes (a subset, from the
meta-initialization) and the final fine-tune (the selection, from the base
model) all call :func:`train`. The Trainer supplies AdamW, the schedule,
checkpoints, resuming, progress bars and multi-GPU (``torchrun`` /
``accelerate launch`` work unchanged).

Output folder::

    output_dir/
      checkpoints/checkpoint-<step>/   Trainer checkpoints (resumed from)
      adapter/                         what was trained, safetensors (atomic)
      optimizer_moments.safetensors    Adam's second moments by parameter name (train.moments; save_moments)
      train_result.json                metrics, log history, sources, config
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from gradselect.data.examples import TaskSet
from gradselect.data.tokenize import TokenizeConfig, tokenize_examples
from gradselect.errors import GradselectError
from gradselect.io import atomic_dir, write_json_atomic
from gradselect.model.adapters import apply_adapter, save_trained
from gradselect.model.config import AdapterConfig, ModelConfig
from gradselect.model.loading import load_model, pick_device
from gradselect.train.config import TrainConfig
from gradselect.train.moments import MOMENTS_FILE
from gradselect.train.moments import save_moments as write_moments

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
RESULT_FILE = "train_result.json"


@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    output_dir, adapter_dir : Path
    n_examples, n_steps : int
    train_loss : float
        Mean training loss over the run (Trainer's figure).
    best_dev_loss : float or None
        With ``select_best_on_dev``: the dev loss of the kept checkpoint.
    log_history : list of dict
        Trainer's log (loss, learning rate, eval loss per step/epoch).
    """

    output_dir: Path
    adapter_dir: Path
    n_examples: int
    n_steps: int
    train_loss: float
    best_dev_loss: float | None
    wall_seconds: float
    log_history: list[dict]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["output_dir"], d["adapter_dir"] = str(self.output_dir), str(self.adapter_dir)
        return d


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written completely; incomplete newer ones are removed.

    HF Trainer writes a checkpoint in place and ``trainer_state.json`` last, so a
    process killed while saving leaves a newest folder without it, which Trainer's
    own ``resume_from_checkpoint=True`` would pick.
    """
    if not folder.exists():
        return None
    checkpoints = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    while checkpoints and not (checkpoints[-1] / "trainer_state.json").exists():
        log.warning("removing incomplete checkpoint %s", checkpoints[-1])
        shutil.rmtree(checkpoints.pop())
    return checkpoints[-1] if checkpoints else None


def save_initial_adapter(
    output_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    adapter_config: AdapterConfig | None = None,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """Save the LoRA adapter a fine-tune from the base model with ``seed`` starts from, untrained.

    B = 0 and A drawn exactly as :func:`train` draws it under the same seed, so the adapter is
    the base model itself plus the point every such fine-tune departs from: estimates made at
    it ([run] estimate_at = "base") linearize around the final fine-tunes' start.

    Returns
    -------
    Path
        ``output_dir/adapter``.
    """
    from transformers import set_seed

    adapter_config = adapter_config or AdapterConfig()
    if adapter_config.method != "lora":
        raise GradselectError("an initial adapter exists for LoRA only: with full fine-tuning the start is the base "
                              "model itself")
    output_dir = Path(output_dir)
    model, _ = load_model(model_config or ModelConfig(), device=device)
    set_seed(seed)  # as train() does right before apply_adapter
    model = apply_adapter(model, adapter_config)
    save_trained(model, output_dir / ADAPTER_DIR)
    return output_dir / ADAPTER_DIR


def train(
    taskset: TaskSet,
    source_names: Sequence[str],
    output_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    adapter_config: AdapterConfig | None = None,
    train_config: TrainConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    init_adapter: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    save_moments: bool = False,
) -> TrainResult:
    """Fine-tune on the named sources (+ target train) and save what was trained.

    Parameters
    ----------
    taskset : TaskSet
    source_names : sequence of str
        Auxiliary sources to train on (may be empty: target train only).
    output_dir : path
        Run folder; an interrupted run in it resumes from its last checkpoint.
    model_config, adapter_config, train_config, tokenize_config : configs
    init_adapter : path, optional
        Start from this trained adapter (e.g. the meta-initialization) instead
        of a fresh one.
    device : str
        ``auto``, ``cpu`` or ``cuda[:i]``.
    progress : bool
        Show the Trainer's progress bar.
    overwrite : bool
        Replace a finished run in ``output_dir``.
    save_moments : bool
        Also write Adam's second moments by parameter name (:data:`MOMENTS_FILE`) for
        preconditioned features: on for a meta-initialization. Off by default: for full
        fine-tuning the file is as large as the model.

    Returns
    -------
    TrainResult
    """
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments, set_seed

    model_config = model_config or ModelConfig()
    adapter_config = adapter_config or AdapterConfig()
    train_config = train_config or TrainConfig()
    tokenize_config = tokenize_config or TokenizeConfig()
    output_dir = Path(output_dir)
    adapter_dir = output_dir / ADAPTER_DIR
    if (output_dir / RESULT_FILE).exists():
        if not overwrite:
            raise GradselectError(f"{output_dir} already holds a finished training run; pass --overwrite to redo it")
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        (output_dir / RESULT_FILE).unlink()

    examples = taskset.training_examples(source_names, include_target_train=train_config.include_target_train,
                                         target_share=train_config.target_share)
    if not examples:
        raise GradselectError("nothing to train on: no sources chosen and include_target_train is false")
    start = time.perf_counter()
    model, tokenizer = load_model(model_config, device=device)
    set_seed(train_config.seed)  # the new adapter's initialisation is seeded too
    model = apply_adapter(model, adapter_config, init_adapter=init_adapter)
    model.train()
    tokens = tokenize_examples(examples, tokenizer, tokenize_config)
    if tokens.n_truncated:
        log.warning(
            "%d of %d training example(s) had their prompt shortened to max_length=%d (e.g. %s)",
            tokens.n_truncated, len(tokens), tokenize_config.max_length, ", ".join(tokens.truncated_ids[:3]),
        )
    train_rows = tokens.rows()
    dev_rows = None
    if train_config.select_best_on_dev:
        dev_rows = tokenize_examples(taskset.target_dev.examples, tokenizer, tokenize_config).rows()

    use_cpu = pick_device(device).type == "cpu"
    dtype = next(model.parameters()).dtype
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=train_config.batch_size,
        per_device_eval_batch_size=train_config.batch_size,
        gradient_accumulation_steps=train_config.grad_accum,
        num_train_epochs=train_config.epochs,
        max_steps=train_config.max_steps or -1,
        learning_rate=train_config.learning_rate,
        lr_scheduler_type=train_config.scheduler,
        warmup_steps=train_config.warmup if train_config.warmup < 1 else int(train_config.warmup),
        weight_decay=train_config.weight_decay,
        max_grad_norm=train_config.max_grad_norm,
        optim="adamw_torch",
        seed=train_config.seed,
        data_seed=train_config.seed,
        bf16=dtype == torch.bfloat16 and not use_cpu,
        use_cpu=use_cpu,
        save_strategy="epoch" if train_config.max_steps is None else "steps",
        save_steps=max(1, (train_config.max_steps or 1) // 4),
        save_total_limit=train_config.save_total_limit,
        eval_strategy="epoch" if dev_rows is not None else "no",
        load_best_model_at_end=dev_rows is not None,
        metric_for_best_model="eval_loss" if dev_rows is not None else None,
        greater_is_better=False if dev_rows is not None else None,
        logging_steps=train_config.logging_steps,
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    if dev_rows is not None and train_config.max_steps is not None:
        args.eval_strategy = args.save_strategy
        args.eval_steps = args.save_steps
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=dev_rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    resume_from = last_complete_checkpoint(output_dir / "checkpoints")
    if resume_from is not None:
        log.warning("resuming training from %s", resume_from)
    outcome = trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    best_dev = trainer.state.best_metric if dev_rows is not None else None

    result = TrainResult(
        output_dir=output_dir,
        adapter_dir=adapter_dir,
        n_examples=len(train_rows),
        n_steps=int(trainer.state.global_step),
        train_loss=float(outcome.training_loss),
        best_dev_loss=None if best_dev is None else float(best_dev),
        wall_seconds=time.perf_counter() - start,
        log_history=list(trainer.state.log_history),
    )
    if trainer.is_world_process_zero():
        with atomic_dir(adapter_dir) as part:
            save_trained(trainer.model, part)
        if save_moments:  # Adam's per-coordinate step scale, for features in its metric ([features] precondition)
            write_moments(trainer.optimizer, trainer.model, output_dir / MOMENTS_FILE)
        write_json_atomic(
            output_dir / RESULT_FILE,
            {
                **result.to_json(),
                "sources": list(source_names),
                "init_adapter": None if init_adapter is None else str(init_adapter),
                "model": json.loads(model_config.model_dump_json()),
                "adapter": json.loads(adapter_config.model_dump_json()),
                "train": json.loads(train_config.model_dump_json()),
                "tokenize": json.loads(tokenize_config.model_dump_json()),
            },
        )
    return result
