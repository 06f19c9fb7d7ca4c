"""The training loop, split as torchvision's classification references split theirs:
``train_one_epoch`` (one pass over the training batches), ``evaluate_epoch`` (the validation
split), and ``train`` (the loop: best epoch, early stopping, progress, and the checkpoint, an
explicit ``checkpoints.Phase`` whose state dict is saved after every epoch and read back on
resume). What to train with is one ``DistillSettings``.

Under torchrun each process trains on its shard in ``DistributedDataParallel``
(``students.distributed``); without augmentation a frozen teacher's outputs are computed once
(``students.teacher_outputs``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distillserve.students import distributed
from distillserve.students.checkpoints import Phase
from distillserve.students.data import augment_affine
from distillserve.students.distill import kd_loss, predict
from distillserve.students.distill_settings import DistillSettings
from distillserve.students.loop_state import LoopState, rng_state, set_rng_state, start
from distillserve.students.sync_batchnorm import synchronized
from distillserve.students.teacher_outputs import TeacherOutputs, cache_decision

__all__ = ["TrainResult", "evaluate_epoch", "train", "train_one_epoch"]

# One line per epoch where no progress bar can be drawn (stderr not a terminal), and where a
# resumed phase starts; the command line shows INFO, a library caller chooses for itself.
_log = logging.getLogger("distillserve.train")


@dataclass
class TrainResult:
    """What training produced: the best model (by validation accuracy) and its history, with
    the throughput it trained at and what became of the teacher's outputs."""

    model: nn.Module
    best_val_accuracy: float
    best_epoch: int
    history: list[dict]
    stopped_early: bool = False
    images_per_s: float = 0.0  # training images per second over all processes
    teacher_share: float = 0.0  # share of the training time spent running the teacher
    teacher_outputs: str = ""  # cached, or why the teacher ran every step


@dataclass
class _Teachers:
    """The frozen teachers of a run and where their outputs come from."""

    models: list[nn.Module]
    cached: TeacherOutputs | None
    hooks: object  # the feature KD's teacher hooks, or None
    why: str = ""  # why the outputs are not cached ("" when they are)
    seconds: float = 0.0  # spent running them


def _index_batches(loader, epoch: int, seed: int) -> Iterator[tuple]:
    """``(indices, positions, global size, inputs, targets)`` for this process's share of one
    epoch of ``loader`` (``students.distributed.epoch_batches``); a plain iterable of
    ``(inputs, targets)`` is used as it is (no indices)."""
    if not isinstance(loader, DataLoader):
        for inputs, targets in loader:
            yield None, torch.arange(len(inputs)), len(inputs), inputs, targets
        return
    for indices, positions, size in distributed.epoch_batches(loader, epoch, seed):
        if indices:
            inputs, targets = loader.collate_fn([loader.dataset[i] for i in indices])
        else:  # fewer images than processes in the last batch: this one takes part empty
            inputs, targets = loader.collate_fn([loader.dataset[0]])
            inputs, targets = inputs[:0], targets[:0]
        yield torch.as_tensor(indices, dtype=torch.long), positions, size, inputs, targets


def train_one_epoch(
    net: nn.Module,
    train_loader: Iterable,
    settings: DistillSettings,
    state: LoopState,
    teachers: _Teachers,
    epoch: int,
    feature_kd: nn.Module | None = None,
) -> tuple[float, int]:
    """One pass over this process's share of the training batches: (loss sum, images)."""
    alpha = settings.alpha_at(epoch, settings.epochs)
    temperature = settings.temperature_at(epoch, settings.epochs)
    total, count = 0.0, 0
    global_batch = getattr(train_loader, "batch_size", None) or 0
    for indices, positions, size, inputs, targets in _index_batches(
        train_loader, epoch, settings.seed
    ):
        inputs = augment_affine(
            inputs,
            **(settings.augment or {}),
            generator=state.generator,
            positions=positions,
            draws=max(global_batch, size),
        )
        logits = net(inputs)
        if len(targets) == 0:  # an empty share: take part in the step with no gradient
            loss = logits.sum() * 0.0
        elif teachers.models:
            loss = kd_loss(
                logits,
                _teacher_logits(teachers, indices, inputs),
                targets,
                temperature,
                alpha,
                settings.teacher_weights,
            )
        else:
            loss = F.cross_entropy(logits, targets, label_smoothing=settings.label_smoothing)
        if feature_kd is not None and len(targets):
            loss = loss + feature_kd()
        total += loss.item() * len(targets)
        count += len(targets)
        # DDP averages the processes' gradients: weigh each share by its size, so that the
        # step is the global batch's mean even when the shares differ (the last batch)
        loss = loss * (len(targets) * distributed.world_size() / size)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if feature_kd is not None:
            distributed.average_gradients(feature_kd)
        state.optimizer.step()
        state.scheduler.step()
    return total, count


def _teacher_logits(teachers: _Teachers, indices, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The teachers' logits for a batch: looked up when cached, else computed (and timed)."""
    if teachers.cached is not None:
        if teachers.hooks is not None:
            teachers.cached.set_features(teachers.hooks, indices)
        return teachers.cached.logits_for(indices)
    clock = time.perf_counter()
    with torch.no_grad():
        logits = [t(inputs) for t in teachers.models]
    teachers.seconds += time.perf_counter() - clock
    return logits


def evaluate_epoch(model: nn.Module, val_loader: Iterable) -> tuple[float, float]:
    """Validation accuracy and loss."""
    logits, labels = predict(model, val_loader)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return accuracy, F.cross_entropy(logits, labels).item()


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    settings: DistillSettings,
    *,
    desc: str = "train",
    feature_kd: nn.Module | None = None,
    trainable: Callable[[nn.Module, int], None] | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    checkpoint: Phase | None = None,
) -> TrainResult:
    """Train ``model`` by ``settings``; keeps the best epoch (by validation accuracy).

    ``feature_kd`` (a ``students.features.FeatureKD``) adds its feature loss and trains its
    adapters; ``trainable(model, epoch)`` (``students.finetune``) chooses what is trained each
    epoch; ``on_epoch(epoch, epochs, val_accuracy)`` is called after each epoch (an exception it
    raises, a search pruning the run, stops training). With ``checkpoint`` every epoch is saved
    there, and a run that finds one continues from its last complete epoch.
    """
    state = start(model, settings, feature_kd, len(train_loader))
    teachers = list(settings.teachers)
    for teacher in teachers:
        teacher.eval()
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None and saved["complete"]:  # a phase the interrupted run finished
        _log.info(
            "[train] %s: finished before the interruption, restored from %s", desc, checkpoint.path
        )
        model.load_state_dict(saved["model"])
        set_rng_state(saved["rng"], state.generator)
        model.eval()
        return TrainResult(model, **saved["result"])

    started = time.perf_counter()
    frozen = _frozen_teachers(settings, teachers, train_loader, feature_kd)
    frozen.seconds = time.perf_counter() - started
    net = distributed.wrap(model)
    if saved is not None:
        state.restore(saved, model, feature_kd)
        _log.info(
            "[train] %s: resuming at epoch %d/%d from %s (best so far: epoch %d, val %.4f)",
            desc,
            state.first + 1,
            settings.epochs,
            checkpoint.path,
            state.best_epoch + 1,
            state.best_acc,
        )
    run = _Run(
        model,
        train_loader,
        val_loader,
        settings,
        state,
        frozen,
        desc,
        feature_kd,
        trainable,
        on_epoch,
        checkpoint,
    )
    images = _loop(run, net)
    return _finish(model, state, frozen, images, time.perf_counter() - started, checkpoint)


def _finish(
    model: nn.Module,
    state: LoopState,
    frozen: _Teachers,
    images: int,
    seconds: float,
    checkpoint: Phase | None,
) -> TrainResult:
    """The best epoch's weights, the result, and the phase marked complete."""
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    result = {
        "best_val_accuracy": state.best_acc,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "stopped_early": state.stopped_early,
        "images_per_s": round(images / seconds, 1) if images else 0.0,
        "teacher_share": round(frozen.seconds / seconds, 3) if images else 0.0,
        "teacher_outputs": frozen.why,
    }
    if checkpoint is not None:
        checkpoint.save(
            {
                "complete": True,
                "model": model.state_dict(),
                "rng": rng_state(state.generator),
                "result": result,
            }
        )
    return TrainResult(model, **result)


def _frozen_teachers(settings, teachers, train_loader, feature_kd) -> _Teachers:
    """The teachers, with their outputs computed once when the images are not augmented."""
    hooks = getattr(feature_kd, "teacher_hooks", None)
    why = cache_decision(settings.cache_teacher_outputs, bool(settings.augment), bool(teachers))
    if why is None and not isinstance(train_loader, DataLoader):
        why = "recomputed every step: the training batches carry no image indices"
    cached = None
    if why is None:
        cached, why = TeacherOutputs.compute(
            teachers, train_loader, hooks, settings.teacher_outputs_mb
        )
    return _Teachers(teachers, cached, hooks, why if why is not None else "")


@dataclass
class _Run:
    """One call of ``train``: what the loop works on and the caller's hooks."""

    model: nn.Module
    train_loader: Iterable
    val_loader: Iterable
    settings: DistillSettings
    state: LoopState
    teachers: _Teachers
    desc: str
    feature_kd: nn.Module | None
    trainable: Callable[[nn.Module, int], None] | None
    on_epoch: Callable[[int, int, float], None] | None
    checkpoint: Phase | None


def _loop(run: _Run, net: nn.Module) -> int:
    """The epochs from ``run.state.first``: train, evaluate, keep the best, checkpoint; the
    training images seen over all processes."""
    model, settings, state, desc = run.model, run.settings, run.state, run.desc
    epochs = settings.epochs
    bar = tqdm(
        range(state.first, epochs if not state.stopped_early else state.first),
        desc=desc,
        unit="epoch",
        leave=False,
        dynamic_ncols=True,
        disable=None if distributed.is_main() else True,
    )  # disable=None: silent when stderr is not a terminal
    lines = bar.disable and distributed.is_main()  # no bar: a log line per epoch instead
    images, epoch_started = 0, time.perf_counter()
    synced = contextlib.ExitStack()  # BatchNorm over the global batch when distributed
    synced.enter_context(synchronized(model))
    for epoch in bar:
        model.train()
        if run.trainable is not None:
            run.trainable(model, epoch)
            net = distributed.wrap(model)  # what DDP syncs follows what is trainable now
        total, count = train_one_epoch(
            net, run.train_loader, settings, state, run.teachers, epoch, run.feature_kd
        )
        total, count = distributed.all_reduce_sum(total, count)
        images += int(count)
        val_acc, val_loss = evaluate_epoch(model, run.val_loader)
        state.record(epoch, settings, total / max(1, count), val_acc, val_loss, model)
        bar.set_postfix(loss=f"{total / max(1, count):.4f}", val=f"{val_acc:.4f}")
        if lines:
            now = time.perf_counter()
            _log.info(
                "[train] %s: epoch %d/%d loss %.4f, val accuracy %.4f (%.1f s)",
                desc,
                epoch + 1,
                epochs,
                total / max(1, count),
                val_acc,
                now - epoch_started,
            )
            epoch_started = now
        if run.on_epoch is not None:
            run.on_epoch(epoch, epochs, val_acc)
        state.judge(val_loss, settings.patience)
        if run.checkpoint is not None:
            run.checkpoint.save(state.checkpoint(epoch, model, run.feature_kd))
        if state.stopped_early:
            break
    bar.close()
    synced.close()
    return images
