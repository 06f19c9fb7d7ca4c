"""What the training loop carries from one epoch to the next (``LoopState``: the optimizer,
the schedule, the augmentation generator, the best epoch so far and the history), how it starts
(seeded, a linear warm-up then a cosine decay over every step) and what a checkpoint saves of
it and restores."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from distillserve.students.distill_settings import DistillSettings

__all__ = ["LoopState", "rng_state", "set_rng_state", "start"]


@dataclass
class LoopState:
    """Everything the loop carries from one epoch to the next: what a checkpoint saves."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    best_state: dict | None = None
    best_acc: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    since_best: int = 0
    stopped_early: bool = False
    first: int = 0  # the epoch to start at

    def record(
        self, epoch: int, settings, loss: float, val_acc: float, val_loss: float, model: nn.Module
    ) -> None:
        """One epoch in the history; its weights kept when its validation accuracy is best."""
        self.history.append(
            {
                "alpha": settings.alpha_at(epoch, settings.epochs),
                "temperature": settings.temperature_at(epoch, settings.epochs),
                "epoch": epoch,
                "loss": loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        if val_acc >= self.best_acc:
            self.best_acc, self.best_epoch = val_acc, epoch
            self.best_state = copy.deepcopy(model.state_dict())

    def judge(self, val_loss: float, patience: int | None) -> None:
        """Early stopping: stop once the validation loss has not improved for ``patience``."""
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.since_best = val_loss, 0
        else:
            self.since_best += 1
        self.stopped_early = patience is not None and self.since_best >= patience

    def checkpoint(self, epoch: int, model: nn.Module, feature_kd: nn.Module | None) -> dict:
        """The state after ``epoch``, as a checkpoint dict."""
        return {
            "complete": False,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "feature_kd": feature_kd.state_dict() if feature_kd is not None else None,
            "rng": rng_state(self.generator),
            "best_state": self.best_state,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "best_loss": self.best_loss,
            "since_best": self.since_best,
            "stopped_early": self.stopped_early,
        }

    def restore(self, saved: dict, model: nn.Module, feature_kd: nn.Module | None) -> None:
        """Continue after the last complete epoch of ``saved``."""
        model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if feature_kd is not None:
            feature_kd.load_state_dict(saved["feature_kd"])
        set_rng_state(saved["rng"], self.generator)
        self.best_state, self.best_acc = saved["best_state"], saved["best_acc"]
        self.best_epoch, self.history = saved["best_epoch"], saved["history"]
        self.best_loss, self.since_best = saved["best_loss"], saved["since_best"]
        self.stopped_early, self.first = saved["stopped_early"], saved["epoch"] + 1


def rng_state(generator: torch.Generator) -> dict:
    """The global torch generator's state and the augmentation generator's."""
    return {"torch": torch.get_rng_state(), "augment": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])


def start(model: nn.Module, settings: DistillSettings, feature_kd, batches: int) -> LoopState:
    """Seeded generators, the optimizer and the cosine schedule over every step."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    params = list(model.parameters())
    if feature_kd is not None:
        params += list(feature_kd.parameters())
    optimizer = settings.make_optimizer(params)
    steps = max(1, settings.epochs * batches)
    warm = max(1, round(settings.warmup * steps)) if settings.warmup else 0

    def factor(step: int) -> float:  # linear warm-up, then cosine decay
        ramp = min(1.0, (step + 1) / warm) if warm else 1.0
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return LoopState(optimizer, scheduler, generator)
