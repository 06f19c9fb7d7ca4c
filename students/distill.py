"""Training and response-based knowledge distillation.

Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
2015) trains a student on the teacher's temperature-softened class probabilities as well as on the
labels:

    L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

with student logits ``s``, teacher logits ``t``, temperature ``T`` and labels ``y``. The ``T^2``
factor keeps the soft-target gradients on the same scale as the hard-label ones when ``T`` changes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distillserve.students import checkpoints, distributed
from distillserve.students.data import augment_affine
from distillserve.students.sync_batchnorm import synchronized
from distillserve.students.teacher_outputs import TeacherOutputs, cache_decision

__all__ = ["TrainResult", "evaluate", "kd_loss", "predict", "soft_targets", "train"]

# One line per epoch where no progress bar can be drawn (stderr not a terminal), and where a
# resumed phase starts; the command line shows INFO, a library caller chooses for itself.
_log = logging.getLogger("distillserve.train")


def soft_targets(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Temperature-softened teacher probabilities; several teachers give their weighted mean
    ``sum_i w_i * softmax(t_i / T)`` with the weights normalised to sum to 1."""
    logits = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    weights = list(weights) if weights is not None else [1.0] * len(logits)
    if len(weights) != len(logits) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per teacher, got {weights}")
    total = sum(weights)
    return sum((w / total) * F.softmax(t / temperature, dim=1) for w, t in zip(weights, logits))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    teacher_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean, where
    ``p_t = softmax(t/T)`` (or the weighted mean of several teachers' ``softmax(t_i/T)``)."""
    target = soft_targets(teacher_logits, temperature, teacher_weights)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target, reduction="batchmean")
    ce = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


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


def _rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "augment": generator.get_state()}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    teacher: nn.Module | Sequence[nn.Module] | None = None,
    teacher_weights: Sequence[float] | None = None,
    temperature: float | Callable[[int, int], float] = 4.0,
    alpha: float | Callable[[int, int], float] = 0.9,
    feature_kd: nn.Module | None = None,
    patience: int | None = None,
    trainable: Callable[[nn.Module, int], None] | None = None,
    label_smoothing: float = 0.0,
    augment: dict | None = None,
    seed: int = 0,
    desc: str = "train",
    on_epoch: Callable[[int, int, float], None] | None = None,
    cache_teacher_outputs: bool = True,
    teacher_outputs_mb: float = 256.0,
) -> TrainResult:
    """SGD with Nesterov momentum and a cosine learning-rate schedule; keeps the best epoch
    (by validation accuracy).

    With a ``teacher`` (or several, with ``teacher_weights``) the loss is ``kd_loss``; without
    one it is cross-entropy. ``alpha`` and ``temperature`` may be schedules
    ``(epoch, epochs) -> value`` (``students.schedules``). ``feature_kd`` (a
    ``students.features.FeatureKD``) adds its feature loss and trains its adapters. ``patience``
    stops training when the validation loss has not improved for that many epochs.
    ``trainable(model, epoch)`` (``students.finetune``) chooses what is trained each epoch.
    ``on_epoch(epoch, epochs, val_accuracy)`` is called after each epoch; an exception it raises
    (a search pruning the run) stops training.

    Without ``augment`` the frozen teacher's outputs are computed once and reused every epoch
    (``students.teacher_outputs``, within ``teacher_outputs_mb``). Under torchrun each process
    trains on its shard in ``DistributedDataParallel`` (``students.distributed``). With an
    active ``students.checkpoints`` checkpointer every epoch is checkpointed and a resumed run
    continues from the last one.
    """
    alpha_at = alpha if callable(alpha) else (lambda _e, _t, v=alpha: v)
    temperature_at = temperature if callable(temperature) else (lambda _e, _t, v=temperature: v)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    if feature_kd is not None:
        params += list(feature_kd.parameters())
    optimizer = torch.optim.SGD(
        params,  # frozen parameters get no gradient, so SGD leaves them alone
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
    )
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    )
    teachers = [] if teacher is None else [teacher] if isinstance(teacher, nn.Module) else teacher
    for t in teachers:
        t.eval()
    phase = checkpoints.phase(desc)
    saved = phase.load() if phase is not None else None
    if saved is not None and saved["complete"]:  # a phase the interrupted run finished
        _log.info(
            "[train] %s: finished before the interruption, restored from %s", desc, phase.path
        )
        model.load_state_dict(saved["model"])
        _set_rng_state(saved["rng"], generator)
        model.eval()
        return TrainResult(model, **saved["result"])
    # ``saved`` may also hold a phase that stopped mid-way: it continues below

    started = time.perf_counter()
    hooks = getattr(feature_kd, "teacher_hooks", None)
    why = cache_decision(cache_teacher_outputs, bool(augment), bool(teachers))
    if why is None and not isinstance(train_loader, DataLoader):
        why = "recomputed every step: the training batches carry no image indices"
    cached = None
    if why is None:
        cached, why = TeacherOutputs.compute(teachers, train_loader, hooks, teacher_outputs_mb)
    teacher_seconds = time.perf_counter() - started
    net = distributed.wrap(model)
    best_state, best_acc, best_epoch, history = None, -1.0, -1, []
    best_loss, since_best, stopped_early, first = math.inf, 0, False, 0
    if saved is not None:  # continue after the last complete epoch
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if feature_kd is not None:
            feature_kd.load_state_dict(saved["feature_kd"])
        _set_rng_state(saved["rng"], generator)
        best_state, best_acc = saved["best_state"], saved["best_acc"]
        best_epoch = saved["best_epoch"]
        history, best_loss, since_best = saved["history"], saved["best_loss"], saved["since_best"]
        stopped_early, first = saved["stopped_early"], saved["epoch"] + 1
        _log.info(
            "[train] %s: resuming at epoch %d/%d from %s (best so far: epoch %d, val %.4f)",
            desc,
            first + 1,
            epochs,
            phase.path,
            best_epoch + 1,
            best_acc,
        )
    bar = tqdm(
        range(first, epochs if not stopped_early else first),
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
        if trainable is not None:
            trainable(model, epoch)
            net = distributed.wrap(model)  # what DDP syncs follows what is trainable now
        alpha_now, temperature_now = alpha_at(epoch, epochs), temperature_at(epoch, epochs)
        total, count = 0.0, 0
        global_batch = getattr(train_loader, "batch_size", None) or 0
        for indices, positions, size, inputs, targets in _index_batches(train_loader, epoch, seed):
            inputs = augment_affine(
                inputs,
                **(augment or {}),
                generator=generator,
                positions=positions,
                draws=max(global_batch, size),
            )
            logits = net(inputs)
            if len(targets) == 0:  # an empty share: take part in the step with no gradient
                loss = logits.sum() * 0.0
            elif teachers:
                if cached is not None:
                    teacher_logits = cached.logits_for(indices)
                    if hooks is not None:
                        cached.set_features(hooks, indices)
                else:
                    clock = time.perf_counter()
                    with torch.no_grad():
                        teacher_logits = [t(inputs) for t in teachers]
                    teacher_seconds += time.perf_counter() - clock
                loss = kd_loss(
                    logits, teacher_logits, targets, temperature_now, alpha_now, teacher_weights
                )
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            if feature_kd is not None and len(targets):
                loss = loss + feature_kd()
            total += loss.item() * len(targets)
            count += len(targets)
            # DDP averages the processes' gradients: weigh each share by its size, so that the
            # step is the global batch's mean even when the shares differ (the last batch)
            loss = loss * (len(targets) * distributed.world_size() / size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if feature_kd is not None:
                distributed.average_gradients(feature_kd)
            optimizer.step()
            scheduler.step()
        total, count = distributed.all_reduce_sum(total, count)
        images += int(count)
        val_logits, val_labels = predict(model, val_loader)
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        history.append(
            {
                "alpha": alpha_now,
                "temperature": temperature_now,
                "epoch": epoch,
                "loss": total / max(1, count),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        if val_acc >= best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
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
        if on_epoch is not None:
            on_epoch(epoch, epochs, val_acc)
        if val_loss < best_loss - 1e-6:
            best_loss, since_best = val_loss, 0
        else:
            since_best += 1
        stopped_early = patience is not None and since_best >= patience
        if phase is not None:
            phase.save(
                {
                    "complete": False,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "feature_kd": feature_kd.state_dict() if feature_kd is not None else None,
                    "rng": _rng_state(generator),
                    "best_state": best_state,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "history": history,
                    "best_loss": best_loss,
                    "since_best": since_best,
                    "stopped_early": stopped_early,
                }
            )
        if stopped_early:
            break
    bar.close()
    synced.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - started
    result = {
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "history": history,
        "stopped_early": stopped_early,
        "images_per_s": round(images / seconds, 1) if images else 0.0,
        "teacher_share": round(teacher_seconds / seconds, 3) if images else 0.0,
        "teacher_outputs": why if why is not None else "",
    }
    if phase is not None:
        phase.save(
            {
                "complete": True,
                "model": model.state_dict(),
                "rng": _rng_state(generator),
                "result": result,
            }
        )
    return TrainResult(model, **result)


@torch.inference_mode()
def predict(
    model: nn.Module | torch.jit.ScriptModule, loader: Iterable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader, in order, in eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    logits, labels = [], []
    for inputs, targets in loader:
        logits.append(model(inputs))
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module | torch.jit.ScriptModule, loader: Iterable) -> float:
    """Top-1 accuracy over a loader."""
    logits, labels = predict(model, loader)
    return (logits.argmax(1) == labels).float().mean().item()
