"""How much ``distillserve bench`` measures: ``quick`` fits a CI smoke run, ``full`` the
published figures."""

from __future__ import annotations

from dataclasses import dataclass

from distillserve.bench.models import VISION_MODELS

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``quick`` fits a CI smoke run, ``full`` the published figures."""

    batch_sizes: tuple[int, ...]
    concurrencies: tuple[int, ...]
    batch_settings: tuple[tuple[int, int], ...]  # (batch_size, max_batch_delay ms)
    seconds: float  # per served point
    vision_models: tuple[str, ...]
    recipe_overrides: dict
    distill_epochs: int  # digits distillation epochs in the distillation section
    resnet_images: int  # random 64x64 images ResNet-50 -> ResNet-18 distils in it (0: skip)
    runtime_models: tuple[str, ...]  # the 224x224 models of the runtimes section
    matrix_models: tuple[str, ...]  # the 224x224 models of the served matrix (digits always)
    builtin_model: str  # ours against the built-in image_classifier on this model's file
    builtin_images: tuple[tuple[int, int], ...]  # its JPEG sizes (width, height)
    compare_concurrencies: tuple[int, ...]  # of the built-in and product comparisons
    product_students: tuple[str, ...]  # ours on these against the built-in on fp32 ResNet-50
    multi_image_models: tuple[str, ...]  # KServe v2 requests of 8 images against 8 requests
    profile_models: tuple[str, ...]  # worker profiles: auto against 1 worker x all cores
    levers: bool  # also measure the alternatives: 1 worker x all cores, the built-in at 1 worker

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                batch_sizes=(1, 8),
                concurrencies=(1, 8),
                batch_settings=((1, 1), (8, 10)),
                seconds=2.0,
                vision_models=("resnet50-fp32", "resnet18-int8"),
                recipe_overrides={
                    "teacher": {"members": 1, "epochs": 2, "kwargs": {"widths": [8, 16, 32]}},
                    "distill": {"epochs": 4},
                    "export": {"min_int8_agreement": 0.9},
                },
                distill_epochs=1,
                resnet_images=0,
                runtime_models=(),
                matrix_models=("resnet18-int8",),
                builtin_model="resnet18-int8",
                builtin_images=((640, 480),),
                compare_concurrencies=(8,),
                product_students=("resnet18-int8",),
                multi_image_models=("digits-int8",),
                profile_models=("digits-int8",),
                levers=False,
            )
        return cls(
            batch_sizes=(1, 4, 8, 16),
            concurrencies=(1, 8, 16, 32),
            batch_settings=((1, 1), (8, 2), (8, 10), (8, 50)),
            seconds=4.0,
            vision_models=tuple(VISION_MODELS),
            recipe_overrides={},
            distill_epochs=60,
            resnet_images=512,
            runtime_models=("resnet18-fp32", "resnet18-int8"),
            matrix_models=("resnet18-int8", "mobilenetv3-int8"),
            builtin_model="mobilenetv3-int8",
            builtin_images=((640, 480), (1280, 960)),
            compare_concurrencies=(16, 32),
            product_students=("resnet18-int8", "mobilenetv3-int8"),
            multi_image_models=("digits-int8", "mobilenetv3-int8"),
            profile_models=("digits-int8", "mobilenetv3-int8"),
            levers=True,
        )
