"""Run by ``tests/unit/test_distributed_resume.py`` in one process or under torchrun: two epochs
of the digits student with augmentation; rank 0 saves the weights to ``argv[1]``."""

import sys

import torch

from distillserve.students import distributed
from distillserve.students.data import load_splits, make_loader, preprocess_spec
from distillserve.students.distill_settings import AUGMENT, DistillSettings
from distillserve.students.recipe import DataConfig
from distillserve.students.training import train
from distillserve.students.zoo import build_model

if __name__ == "__main__":
    distributed.init_from_env()
    torch.set_num_threads(1)
    spec, splits = preprocess_spec(DataConfig()), load_splits(DataConfig(), 0)
    loaders = [
        make_loader(splits.train, spec, 64, shuffle=True),
        make_loader(splits.val, spec, 256),
    ]
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 10, 1, {"widths": [16, 32, 32]})
    train(model, *loaders, DistillSettings(epochs=2, lr=0.05, weight_decay=1e-4, augment=AUGMENT))
    if distributed.is_main():
        torch.save(model.state_dict(), sys.argv[1])
    distributed.shutdown()
