"""The training loop every model shares: stages, progress bar, atomic checkpoints, exact resume.

    model = create_model("pedenet")
    history = train(model, train_images, steps=200, run_dir="runs/brick", data="builtin:brick")
    # interrupted? rebuild from the checkpoint and go on where it stopped:
    history = resume("runs/brick", train_images)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastad.files import write_json
from fastad.checks import check_int
from fastad.engine.checkpoint import CONFIG_FILE, Checkpoint, load_checkpoint, restore_optimizer, save_checkpoint
from fastad.models.base import AnomalyModel

KEPT_HEADER_KEYS = ("calibration_holdout",)  # facts of the run a resume carries over (fastad.engine.pipeline)
HISTORY_FILE = "history.json"


def _steps_per_stage(model: AnomalyModel, steps) -> dict[str, int]:
    if steps is None:
        steps = model.default_steps
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = {stage: steps for stage in model.stages}
    if not isinstance(steps, dict) or set(steps) != set(model.stages):
        raise ValueError(f"steps must be an int >= 0 or a dict of one per stage {model.stages}, got {steps!r}")
    for stage, n in steps.items():
        check_int(f"steps[{stage!r}]", n, 0)
    return dict(steps)


def _resumed_history(run_dir, position: tuple[int, int]) -> list[dict]:
    """The history rows of run_dir before training position (stage index, step)."""
    history_path = Path(run_dir) / HISTORY_FILE
    if not history_path.is_file():
        return []
    return [row for row in json.loads(history_path.read_text()) if (row["stage_index"], row["step"]) < position]


def _train_steps(model: AnomalyModel, stage_index: int, steps: range, n: int, train_images, generator, optimizer,
                 scheduler, history: list, save, checkpoint_every: int, progress: bool) -> None:
    """Optimizer steps `steps` (of n) of stage stage_index, checkpointing every checkpoint_every."""
    stage = model.stages[stage_index]
    bar = tqdm(steps, initial=steps.start, total=n, desc=f"{model.name} {stage}", unit="step",
               disable=not progress, dynamic_ncols=True)
    for step in bar:
        losses = model.training_loss(stage, train_images, generator)
        total = losses["total"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"{model.name} stage {stage!r} step {step}: the loss is {float(total.detach())}; "
                                     "lower the learning rate or check the input images")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        row = {name: float(value.detach()) for name, value in losses.items()}
        history.append({"stage_index": stage_index, "stage": stage, "step": step, **row})
        bar.set_postfix(loss=f"{row['total']:.4g}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < n:
            save(stage_index, step + 1, optimizer, scheduler)


@dataclass(frozen=True)
class TrainingRun:
    """What a training run is asked to do (train's arguments, checked): steps {stage: n}, seed,
    run_dir (None: nowhere), data (the dataset spec), checkpoint_every, progress and the extra
    header facts every checkpoint keeps."""

    steps: dict
    seed: int = 0
    run_dir: Path | str | None = None
    data: str | None = None
    checkpoint_every: int = 50
    progress: bool = True
    header: dict | None = None


@dataclass(frozen=True)
class ResumeState:
    """Where an interrupted run stopped, as its checkpoint records it: the stage index and step
    the next optimizer step has, the checkpoint header (optimizer and scheduler state) and its
    training tensors (optimizer.*, the batch generator's state)."""

    stage_index: int
    step: int
    header: dict
    tensors: dict

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> ResumeState:
        """The resume state of a loaded checkpoint whose header holds a training position."""
        training = checkpoint.header["training"]
        return cls(training["stage_index"], training["step"], checkpoint.header, checkpoint.training_tensors)

    def restore(self, optimizer, scheduler) -> None:
        """Puts the saved optimizer (and scheduler) state of the stage it stopped in back."""
        restore_optimizer(optimizer, self.header, self.tensors)
        if scheduler is not None and "scheduler" in self.header:
            scheduler.load_state_dict(self.header["scheduler"])


def train(model: AnomalyModel, train_images: torch.Tensor, steps=None, seed: int = 0, run_dir=None,
          data: str | None = None, checkpoint_every: int = 50, progress: bool = True,
          header: dict | None = None) -> list[dict]:
    """Trains `model` through its stages on the normal images train_images [N, 3, H, W] (on the
    model's device), then prepares it for scoring.

    Args:
        steps: optimizer steps per stage: an int for every stage, a {stage: n} dict, or None for
            the model's demo-sized default_steps.
        seed: seeds the CPU generator that draws every training batch (checkpointed, so a resumed
            run draws the same batches as an uninterrupted one).
        run_dir: where checkpoint.safetensors, config.json and history.json go (None: nowhere).
        data: the dataset spec, kept in the checkpoint header.
        checkpoint_every: steps between checkpoints, an int >= 1 (one is always written at the end
            of each stage).
        header: more JSON facts for every checkpoint's header (a resume keeps them).

    Returns:
        the per-step losses [{"stage", "step", "total", ...}] (including those before a resume).
    """
    check_int("checkpoint_every", checkpoint_every, 1)
    plan = TrainingRun(_steps_per_stage(model, steps), seed, run_dir, data, checkpoint_every, progress, header)
    model.setup(train_images)
    return _fit(model, train_images, plan, None)


def _fit(model: AnomalyModel, train_images: torch.Tensor, plan: TrainingRun, state: ResumeState | None) -> list[dict]:
    """Runs plan's stages from the start (state None) or from where state says, then prepares
    the model for scoring; the history of every step."""
    generator = torch.Generator().manual_seed(plan.seed)
    history: list[dict] = []
    first_stage, first_step = 0, 0
    if state is not None:
        generator.set_state(state.tensors["generator"])
        first_stage, first_step = state.stage_index, state.step
        history = _resumed_history(plan.run_dir, (first_stage, first_step))

    def save(stage_index: int, step: int, optimizer=None, scheduler=None, complete: bool = False) -> None:
        if plan.run_dir is None:
            return
        position = {"stage_index": stage_index, "stage": model.stages[stage_index] if stage_index < len(model.stages)
                    else None, "step": step, "steps": plan.steps, "seed": plan.seed, "complete": complete}
        save_checkpoint(plan.run_dir, model, {**(plan.header or {}), "data": plan.data, "image_size": model.image_size,
                                              "training": position}, optimizer, scheduler, generator)
        write_json(history, Path(plan.run_dir) / HISTORY_FILE)

    for stage_index in range(first_stage, len(model.stages)):
        n = plan.steps[model.stages[stage_index]]
        optimizer, scheduler = model.configure_optimizer(model.stages[stage_index], n)
        start = 0
        if state is not None and stage_index == first_stage and first_step > 0:
            state.restore(optimizer, scheduler)
            start = first_step
        model.train()
        _train_steps(model, stage_index, range(start, n), n, train_images, generator, optimizer, scheduler, history,
                     save, plan.checkpoint_every, plan.progress)
        save(stage_index, n, optimizer, scheduler)
    model.eval()
    with torch.no_grad():
        model.prepare_scoring(train_images)
    save(len(model.stages), 0, complete=True)
    return history


def resume(run_dir, train_images: torch.Tensor, device="cpu", progress: bool = True,
           checkpoint_every: int = 50) -> tuple[AnomalyModel, list[dict]]:
    """Rebuilds the model of run_dir's checkpoint and finishes its training where it stopped
    (train_images [N, 3, H, W] must be the same normal images). A finished run is returned as is."""
    check_int("checkpoint_every", checkpoint_every, 1)
    checkpoint = load_checkpoint(run_dir, device)
    header = checkpoint.header
    training = header.get("training")
    if training is None:
        raise ValueError(f"{Path(run_dir) / CONFIG_FILE} has no training position to resume from")
    if training["complete"]:
        history_path = Path(run_dir) / HISTORY_FILE
        return checkpoint.model, json.loads(history_path.read_text()) if history_path.is_file() else []
    plan = TrainingRun(_steps_per_stage(checkpoint.model, training["steps"]), seed=training["seed"], run_dir=run_dir,
                       data=header.get("data"), checkpoint_every=checkpoint_every, progress=progress,
                       header={key: header[key] for key in KEPT_HEADER_KEYS if key in header})
    history = _fit(checkpoint.model, train_images.to(device), plan, ResumeState.of(checkpoint))
    return checkpoint.model, history
