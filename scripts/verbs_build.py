"""Verbs that build, measure and package: build, compare, tune, bench, archive, cpp-check,
export-kserve, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distillserve.errors import ExportError
from distillserve.scripts.options import (
    add_deployment_options,
    add_trust_options,
    teacher_cache_options,
    trust_of,
)

__all__ = ["add_verbs"]


def _build(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from distillserve.students import distributed
    from distillserve.students.pipeline import build
    from distillserve.students.recipe import load_recipe

    recipe = load_recipe(args.recipe)  # a bad recipe fails here, before any process starts
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = ["build", args.recipe, "--out", args.out]
        argv += ["--no-teacher-cache"] if args.no_teacher_cache else []
        argv += ["--teacher-cache", args.teacher_cache] if args.teacher_cache else []
        argv += ["--resume"] if args.resume else []
        return subprocess.call(distributed.launch_command(args.nproc, argv))
    cache = None if args.no_teacher_cache else args.teacher_cache
    checkpoints = Path(args.out) / recipe.name / recipe.archive.version / ".checkpoints"
    resume = f"distillserve build {args.recipe} --resume"
    try:
        result = build(recipe, args.out, teacher_cache_dir=cache, resume=args.resume)
    except ExportError as err:
        raise ExportError(
            f"{err}; the training is checkpointed in {checkpoints}: after changing export "
            f"settings, {resume} skips it"
        ) from None
    except KeyboardInterrupt:
        print(
            f"distillserve build: interrupted; every finished epoch is checkpointed in "
            f"{checkpoints}: continue with {resume}",
            file=sys.stderr,
        )
        return 130
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    for role, path in result.artifacts.items():
        m = result.metrics[role]
        print(f"{role:<14} {path}  accuracy {m['test_accuracy']:.4f}  {m['size_bytes']} bytes")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from distillserve.search.compare import run_compare

    cache = None if args.no_teacher_cache else args.teacher_cache
    report = run_compare(args.recipes, args.out, teacher_cache_dir=cache)
    print((Path(args.out) / "report.md").read_text(), end="")
    print(
        f"{len(report['rows'])} models in {report['total_seconds']:.0f} s; plot: "
        f"{Path(args.out) / 'pareto.png'}"
    )
    return 0


def _tune(args: argparse.Namespace) -> int:
    from distillserve.search.tune import run_tune

    cache = None if args.no_teacher_cache else args.teacher_cache
    report = run_tune(
        args.recipe,
        budget=args.budget,
        trials=args.trials,
        time_limit=args.time_limit,
        cv_folds=args.cv_folds,
        objective=args.objective,
        out=args.out,
        teacher_cache_dir=cache,
    )
    print((Path(args.out) / "report.md").read_text(), end="")
    if report["best_recipe"]:
        print(f"best recipe: {report['best_recipe']} (distillserve build {report['best_recipe']})")
    return 130 if report["interrupted"] else 0


def _bench(args: argparse.Namespace) -> int:
    from distillserve.bench.report import update_readme
    from distillserve.bench.run import run_bench

    if args.text:
        return _bench_text(args)
    if args.engines:
        return _bench_engines(args)
    path = run_bench(quick=args.quick, out=args.out, recipe_path=args.recipe, work=args.work)
    summary = path.with_suffix(".md").read_text()
    print(summary, end="")
    if args.readme:
        update_readme(Path(args.readme), summary)
        print(f"updated the Performance section of {args.readme}")
    return 0


def _archive(args: argparse.Namespace) -> int:
    from distillserve.archiver import build_archive

    result = build_archive(
        args.artifact_dir,
        args.model_store,
        model_name=args.model_name,
        version=args.version,
        file_name=args.file_name,
        force=args.force,
        model_format=args.format,
        signing_key_path=args.signing_key,
        unsigned=args.unsigned,
    )
    serving = result.build_info.get("serving")
    if serving:  # archive.min_workers / max_workers / threads: auto
        print(f"auto: {serving['why']}", file=sys.stderr)
    print(result.path)
    return 0


def _export_kserve(args: argparse.Namespace) -> int:
    from distillserve.archiver.image import runtime_versions
    from distillserve.archiver.kserve import export_kserve, oversubscribed

    mars = [Path(m) for m in args.mars]
    out = export_kserve(
        mars,
        Path(args.out),
        name=args.name,
        image=args.image,
        storage_uri=args.storage_uri,
        trust=trust_of(args),
    )
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for path in files:
        print(path)
    pins = ", ".join(f"{n}=={v}" for n, v in runtime_versions(mars).items())
    print(f"wrote {len(files)} files to {out}; the image installs {pins}; see {out / 'README.md'}")
    for line in oversubscribed(mars):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _cpp_check(args: argparse.Namespace) -> int:
    from distillserve.students.cpp_check import cpp_check

    report = cpp_check(args.artifact_dir, args.build_dir)
    print(f"{report['artifact']}: LibTorch C++ ({report['program']}) against Python")
    for fmt in ("torchscript", "pt2"):
        if fmt in report:
            r = report[fmt]
            print(
                f"  {fmt:<12} C++ accuracy {r['cpp_accuracy']:.4f}, Python "
                f"{r['python_accuracy']:.4f}; same top-1 on {r['same_labels']}/{r['samples']}; "
                f"C++ {r['cpp_latency_ms_batch1']:.3f} ms at batch 1, "
                f"{r['cpp_latency_ms_batch8']:.3f} ms at batch 8 (1 thread)"
            )
    print("same predictions" if report["same"] else "C++ and Python DIFFER")
    return 0 if report["same"] else 1


def _write_section(out: Path, name: str, quick: bool, results: dict, summary: str) -> int:
    """A bench section's ``<date>-NAME.json`` and ``.md`` (``quick-NAME`` for a quick run)."""
    import json
    from datetime import UTC, datetime

    stamp = "quick" if quick else datetime.now(UTC).strftime("%Y-%m-%d")
    (out / f"{stamp}-{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stamp}-{name}.md").write_text(summary)
    print(summary, end="")
    return 0


def _bench_text(args: argparse.Namespace) -> int:
    from distillserve.bench.text import run_text_bench, text_summary
    from distillserve.log import progress

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_text_bench(
        Path(args.work),
        args.text_recipe,
        seconds=3.0 if args.quick else 6.0,
        log=progress("bench"),
    )
    return _write_section(out, "text", args.quick, results, text_summary(results))


def _bench_engines(args: argparse.Namespace) -> int:
    from distillserve.bench.engines_run import engines_summary, run_engines_bench
    from distillserve.log import progress

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_engines_bench(
        Path(args.work) / "engines",
        Path(args.recipe),
        seconds=2.0 if args.quick else 5.0,
        rounds=1 if args.quick else 3,
        log=progress("bench"),
        quick=args.quick,
    )
    return _write_section(out, "engines", args.quick, results, engines_summary(results))


def _demo(args: argparse.Namespace) -> int:
    import json

    from distillserve.scripts.demo import DEMO_RECIPES, run_demo

    reports = [
        run_demo(recipe, args.config, args.out, args.model_store, args.concurrency)
        for recipe in args.recipe or DEMO_RECIPES
    ]
    out = Path(args.out) / "report.json"
    out.write_text(json.dumps({"reports": reports}, indent=2) + "\n")
    print(f"\nAll reports: {out}")
    return 0


def add_verbs(verbs) -> None:
    p = verbs.add_parser(
        "build", help="train/distill/quantize/export a recipe into build/NAME/VERSION/"
    )
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/digits.yaml")
    p.add_argument("--out", default="build", help="output root (default: build)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted build from its last complete epoch "
        "(build/NAME/VERSION/.checkpoints/)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train in N processes on this host (launches torchrun; default 1)",
    )
    teacher_cache_options(p)
    p.set_defaults(func=_build)

    p = verbs.add_parser(
        "compare", help="build several recipes; table, JSON and Pareto plot of their students"
    )
    p.add_argument("recipes", nargs="+", help="recipe files, e.g. recipes/digits*.yaml")
    p.add_argument("--out", default="build/compare", help="output folder (default: build/compare)")
    teacher_cache_options(p)
    p.set_defaults(func=_compare)

    p = verbs.add_parser(
        "tune", help="search the recipe's tune: space for the fastest student within a budget"
    )
    p.add_argument(
        "recipe", help="recipe YAML file with a tune: section, e.g. recipes/digits-tune.yaml"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="largest validation-accuracy drop from the teacher allowed (0.01 = one point)",
    )
    p.add_argument("--trials", type=int, default=20, help="trials in all, resumed ones included")
    p.add_argument(
        "--time-limit",
        type=float,
        help="seconds for the whole run: trials, then as many finalists' cross-validation "
        "checks as fit",
    )
    p.add_argument(
        "--cv-folds",
        type=int,
        help="cross-validation folds per finalist (default: the recipe's tune.cv_folds; 0 = off)",
    )
    p.add_argument(
        "--objective",
        choices=("latency", "size", "served"),
        default="latency",
        help="the cost to minimise: int8 batch-1 latency, file size, or latency then served "
        "throughput of the final candidates through a real TorchServe (default: latency)",
    )
    p.add_argument(
        "--out", default="build/tune", help="output folder and study (default: build/tune)"
    )
    teacher_cache_options(p)
    p.set_defaults(func=_tune)

    p = verbs.add_parser(
        "bench", help="measure models, handler and served throughput; JSON, plots, summary"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run, not a record: fewer and shorter points (main section about 6 min; "
        "--engines one round, about 8 min; --text shorter points after the full build)",
    )
    p.add_argument("--out", default="docs/bench", help="results folder (default: docs/bench)")
    p.add_argument("--recipe", default="recipes/digits.yaml", help="the digits pipeline to time")
    p.add_argument("--work", default="build/bench", help="scratch folder (default: build/bench)")
    p.add_argument("--readme", help="write the summary into this README's Performance section")
    p.add_argument("--text", action="store_true", help="only the text section (--text-recipe)")
    p.add_argument(
        "--text-recipe",
        default="recipes/reviews-bert-small.yaml",
        help="the text section's recipe (default: recipes/reviews-bert-small.yaml, a BERT-Small "
        "teacher; recipes/reviews.yaml is the demo's)",
    )
    p.add_argument(
        "--engines",
        action="store_true",
        help="only the engines section: TorchServe and Triton side by side on int8 ONNX students",
    )
    p.set_defaults(func=_bench)

    p = verbs.add_parser("archive", help="package a student artifact directory as a .mar")
    p.add_argument("artifact_dir", help="e.g. build/digits/1.0 or build/digits/1.0/teacher")
    p.add_argument("--model-store", default="model_store", help="where the .mar goes")
    p.add_argument(
        "--format",
        help="which model file goes in (default: the first of the recipe's export.formats)",
    )
    p.add_argument(
        "--model-name",
        help="override the recipe's archive.model_name (default for a format other than the "
        "artifact's first: NAME-FORMAT)",
    )
    p.add_argument("--version", help="override the recipe's archive.version")
    p.add_argument(
        "--file-name",
        help="archive file name (default: MODEL_NAME.mar for the recipe's version, "
        "MODEL_NAME-VERSION.mar for another)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing archive of another model or version (default: refuse)",
    )
    p.add_argument(
        "--signing-key",
        help="private key that signs the archive (default: DISTILLSERVE_SIGNING_KEY, then "
        "keys/archive-signing.pem from `distillserve keys init`)",
    )
    p.add_argument(
        "--unsigned",
        action="store_true",
        help="write no signature (servers refuse such archives unless told to allow them)",
    )
    p.set_defaults(func=_archive)

    p = verbs.add_parser(
        "export-kserve", help="write the KServe / Kubernetes layout and manifests for archives"
    )
    p.add_argument("mars", nargs="+", help=".mar files to deploy")
    p.add_argument("--out", default="build/kserve", help="output directory (default build/kserve)")
    add_deployment_options(
        p, "distillserve-torchserve:0.12.0-torchVERSION", "config/ and model-store/"
    )
    p.add_argument(
        "--config",
        default="config.properties",
        help="serving config whose distillserve_public_key verifies the archives "
        "(default: %(default)s)",
    )
    add_trust_options(p)
    p.set_defaults(func=_export_kserve)

    p = verbs.add_parser(
        "cpp-check", help="build cpp/ against this torch's libtorch; compare its predictions"
    )
    p.add_argument("artifact_dir", help="e.g. build/digits/1.0 (uses model.pt and model.pt2)")
    p.add_argument("--build-dir", default="build/cpp", help="CMake build folder (cached)")
    p.set_defaults(func=_cpp_check)

    p = verbs.add_parser(
        "demo", help="build, archive, serve and query the digits and review models; report"
    )
    p.add_argument(
        "--recipe",
        action="append",
        help="a demo recipe (may be repeated; default: recipes/digits.yaml, recipes/reviews.yaml)",
    )
    p.add_argument("--config", default="config.properties")
    p.add_argument("--out", default="build")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--concurrency", type=int, default=16)
    p.set_defaults(func=_demo)
