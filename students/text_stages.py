"""The text task's first stages: data (with its tokenizer), teacher and distilled student. Each
returns the image task's typed results (``stages.DataStage``, ``TeacherStage``,
``DistilledStudent``), so the stages after them, quantization, export, measuring and the
artifact, are one code path for both tasks (``students.pipeline``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from distillserve.errors import RecipeError
from distillserve.handlers.textprep import TextSpec, configure, encode_batch
from distillserve.students import teacher_cache
from distillserve.students.checkpoints import NO_CHECKPOINTS, Checkpointer, NoCheckpoints
from distillserve.students.data import labelled_fraction
from distillserve.students.distill import evaluate
from distillserve.students.distill_settings import TEXT_WARMUP, DistillSettings
from distillserve.students.distill_settings import of_recipe as distill_settings
from distillserve.students.recipe import Recipe
from distillserve.students.stages import DataStage, DistilledStudent
from distillserve.students.teachers import TeacherStage, teacher_stage, train_members
from distillserve.students.text_data import load_text_splits, make_text_loader
from distillserve.students.text_kd import TransformerKD
from distillserve.students.text_models import (
    TextClassifier,
    build_classifier,
    init_from_teacher,
    load_huggingface,
    spec_checked,
    student_like,
    train_wordpiece,
)
from distillserve.students.training import train
from distillserve.students.zoo import count_parameters

__all__ = ["distill_text_student", "load_text_data", "make_text_teacher"]

Log = Callable[[str], None]
TOKENIZER_FILE = "tokenizer.json"


def load_text_data(
    recipe: Recipe,
    log: Log,
    cache: Path | None = None,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> tuple[DataStage, TextClassifier | None]:
    """Split the texts, take the teacher's tokenizer (a Hugging Face teacher is loaded here, and
    returned) or train one on the training split, and make the loaders (tokenized as the
    handler does)."""
    data, seed = recipe.data, recipe.seed
    splits = load_text_splits(data, seed)
    loaded = None
    if recipe.teacher.source == "huggingface":
        loaded, tokenizer = load_huggingface(recipe.teacher.path, splits.classes)
        pad_id, origin = loaded.pad_id, f"the teacher's ({recipe.teacher.path})"
    else:
        tokenizer, origin = _trained_tokenizer(recipe, splits.train.texts, cache, checkpointer)
        pad_id = 0
    spec = TextSpec(
        max_length=data.max_length,
        too_long=data.too_long,
        max_bytes=data.max_bytes,
        pad_id=pad_id,
        tokenizer=TOKENIZER_FILE,
        lowercase=data.lowercase,
    )
    tokenizer_json = tokenizer.to_str()  # what the artifact ships, before configuring
    tokenizer = configure(tokenizer, spec)  # as the handler loads it
    log(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"texts, {len(splits.classes)} classes; tokenizer: {origin}, vocabulary "
        f"{tokenizer.get_vocab_size()}, up to {data.max_length} tokens"
    )
    b, calibrated = data.batch_size, recipe.quantize.calibration_batches
    stage = DataStage(
        splits=splits,
        spec=spec,
        train=make_text_loader(splits.train, tokenizer, b, shuffle=True, seed=seed),
        students=make_text_loader(
            labelled_fraction(splits.train, 1.0, seed), tokenizer, b, shuffle=True, seed=seed
        ),
        calibration=make_text_loader(
            splits.train.subset(torch.arange(min(len(splits.train), b * calibrated))),
            tokenizer,
            b,
        ),
        val=make_text_loader(splits.val, tokenizer, 128),
        test=make_text_loader(splits.test, tokenizer, 128),
        files={TOKENIZER_FILE: tokenizer_json.encode()},
        example=lambda size: _example(tokenizer, splits.test.texts, size),
    )
    return stage, loaded


def _trained_tokenizer(recipe: Recipe, texts: list[str], cache, checkpointer) -> tuple:
    """The WordPiece tokenizer of the training split, and where it came from. Its training is
    not deterministic (ties between merges fall differently in each process), so a tokenizer,
    once trained, is kept beside the checkpoints and in the teacher cache and reused with them:
    a resumed or cached teacher then reads the token ids it was trained on."""
    from tokenizers import Tokenizer

    kept = []
    if isinstance(checkpointer, Checkpointer):
        kept.append(checkpointer.directory / TOKENIZER_FILE)
    if cache is not None:
        kept.append(Path(cache) / f"tokenizer-{teacher_cache.cache_key(recipe)}.json")
    found = next((path for path in kept if path.is_file()), None)
    if found is not None:
        tokenizer, origin = Tokenizer.from_str(found.read_text()), f"reused {found}"
    else:
        data = recipe.data
        tokenizer = train_wordpiece(texts, data.vocab_size, data.lowercase)
        origin = f"WordPiece trained on the training split ({data.vocab_size} max)"
    for path in kept:  # every place that lacks it, so that each reuses this one
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(tokenizer.to_str())
    return tokenizer, origin


def _example(tokenizer, texts: list[str], size: int) -> torch.Tensor:
    """Token ids of the first ``size`` test texts (cycled), padded alike: a typical input."""
    chosen = [texts[i % len(texts)] for i in range(size)]
    return encode_batch(tokenizer, chosen)[0]


def make_text_teacher(
    recipe: Recipe,
    data: DataStage,
    loaded,
    log: Log,
    cache: Path | None,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> TeacherStage:
    """The Hugging Face teacher (checked on the validation split), or ``teacher.members``
    BERTs trained here from their sizes (reused from ``cache`` when trained before)."""
    config = recipe.teacher
    if loaded is not None:
        spec_checked(data.spec, loaded)
        accuracy = evaluate(loaded, data.val)
        log(f"teacher: loaded {config.path} offline, validation accuracy {accuracy:.2%}")
        return teacher_stage(recipe, [loaded], log)
    vocab = len(json.loads(data.files[TOKENIZER_FILE])["model"]["vocab"])
    settings = DistillSettings(
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        optimizer=config.optimizer,
        warmup=TEXT_WARMUP if config.optimizer == "adamw" else 0.0,
    )
    members = train_members(
        recipe,
        log,
        cache,
        checkpointer,
        lambda: build_classifier(
            config.sizes, vocab, data.splits.classes, recipe.data.max_length, data.spec.pad_id
        ),
        f"{config.layers}-layer x {config.hidden} transformer(s) from scratch",
        settings,
        data,
    )
    return teacher_stage(recipe, members, log)


def distill_text_student(
    recipe: Recipe,
    data: DataStage,
    teacher: TeacherStage,
    log: Log,
    on_epoch: Callable[[int, int, float], None] | None = None,
    checkpointer: Checkpointer | NoCheckpoints = NO_CHECKPOINTS,
) -> DistilledStudent:
    """The student: the teacher's family at the recipe's sizes, initialised from the teacher
    where shapes allow, trained with the logit KD loss plus TinyBERT's hidden-state and
    attention losses when the recipe weighs them."""
    kd, config = recipe.distill, recipe.student
    settings = distill_settings(recipe).learning_from(teacher.kd_teachers, teacher.kd_weights)
    torch.manual_seed(settings.seed)
    first = teacher.members[0]
    student = student_like(first, config.sizes, data.splits.classes)
    if config.init == "teacher":
        copied, total, layers = init_from_teacher(student, first)
        log(
            f"student: {copied} of {total} tensors initialised from the teacher (layers "
            f"{layers}{'' if copied else '; no shape matches, so from scratch'})"
        )
    params = count_parameters(student)
    if config.max_params and params > config.max_params:
        raise RecipeError(
            "student.max_params",
            f"{config.sizes} has {params} parameters > {config.max_params}; make it smaller",
        )
    layer_kd = None
    if kd.hidden_weight or kd.attention_weight:
        if len(teacher.members) > 1:
            raise RecipeError(
                "distill.hidden_weight",
                "hidden-state and attention KD need one teacher (teacher.members: 1)",
            )
        layer_kd = TransformerKD(
            first, student, kd.layer_map, kd.hidden_weight, kd.attention_weight
        )
        settings = settings.replace(cache_teacher_outputs=False)
    log(
        f"student: distilling a {config.layers}-layer x {config.hidden} transformer "
        f"({params:,} params) for {kd.epochs} epochs, T={kd.temperature:g}, alpha={kd.alpha:g}"
        + (
            f", hidden x{kd.hidden_weight:g} and attention x{kd.attention_weight:g} KD over "
            f"layers {layer_kd.pairs}"
            if layer_kd
            else ""
        )
    )
    try:
        result = train(
            student,
            data.students,
            data.val,
            settings,
            desc="student",
            feature_kd=layer_kd,
            on_epoch=on_epoch,
            checkpoint=checkpointer.phase("student"),
        )
    finally:
        if layer_kd is not None:
            layer_kd.remove()
    if result.stopped_early:
        log(f"student: early stop after {len(result.history)} epochs")
    if layer_kd is not None:
        result.teacher_outputs = (
            "recomputed every step: the hidden-state and attention losses need the teacher's "
            "states of each batch"
        )
    log(
        f"student: teacher outputs {result.teacher_outputs}; {result.images_per_s:,.0f} "
        f"training texts/s, {result.teacher_share:.0%} of the time in the teacher"
    )
    throughput = {
        "distill_images_per_s": result.images_per_s,
        "distill_teacher_share": result.teacher_share,
        "teacher_outputs": result.teacher_outputs,
    }
    return DistilledStudent(student, settings, [], len(result.history), throughput)
