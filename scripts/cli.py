"""``distillserve``: one command, one verb per job. Thin argparse front ends over the libraries.

Every verb has ``--help``; bad input is a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

# Before torch is imported anywhere: these would drown the output of every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")

from distillserve.errors import DistillServeError  # noqa: E402

__all__ = ["get_parser", "main"]


def _build(args: argparse.Namespace) -> int:
    from distillserve.students.pipeline import build
    from distillserve.students.recipe import load_recipe

    cache = None if args.no_teacher_cache else args.teacher_cache
    result = build(load_recipe(args.recipe), args.out, teacher_cache_dir=cache)
    for role, path in result.artifacts.items():
        m = result.metrics[role]
        print(f"{role:<14} {path}  accuracy {m['test_accuracy']:.4f}  {m['size_bytes']} bytes")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from distillserve.bench.compare import run_compare

    cache = None if args.no_teacher_cache else args.teacher_cache
    report = run_compare(args.recipes, args.out, teacher_cache_dir=cache)
    print((Path(args.out) / "report.md").read_text(), end="")
    print(
        f"{len(report['rows'])} models in {report['total_seconds']:.0f} s; plot: "
        f"{Path(args.out) / 'pareto.png'}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from distillserve.bench.report import update_readme
    from distillserve.bench.run import run_bench

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
    )
    print(result.path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from distillserve.serving.server import TorchServe

    server = TorchServe(args.config, args.run_dir, args.model_store)
    if args.action == "start":
        server.start(timeout=args.timeout)
        print(
            f"TorchServe ready: inference {server.inference_url}, "
            f"management {server.management_url}, metrics {server.metrics_url}"
        )
        print(f"token file: {server.key_file}")
        print(
            f"logs: {server.log_dir}; stop with: distillserve serve stop --run-dir {args.run_dir}"
        )
    elif args.action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        status = server.status()
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 3
    return 0


def _predict(args: argparse.Namespace) -> int:
    from distillserve.serving.rest import InferenceClient, read_key
    from distillserve.serving.server import read_properties

    paths = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            paths.append(path)
        else:
            raise DistillServeError(f"image not found: {path}")
    if not paths:
        raise DistillServeError("no image files given")
    key_file = args.key_file or Path(args.run_dir) / "key_file.json"
    token = None if args.no_token else read_key(key_file, "inference")
    images = [p.read_bytes() for p in paths]
    if args.grpc:
        results, stats = _predict_grpc(args, token, images)
    else:
        url = args.url or read_properties(args.config).get(
            "inference_address", "http://127.0.0.1:8080"
        )
        client = InferenceClient(url, token, timeout=args.timeout)
        results = client.predict_many(args.model, images, args.concurrency, args.version)
        stats = client.retry_stats
    failed = 0
    for path, result in zip(paths, results):
        print(json.dumps({"file": str(path), "status": result.status, "result": result.body}))
        failed += not result.ok
    print(
        f"{len(results)} images, {failed} failed; {stats.retries} retries "
        f"({stats.retried_calls} requests retried)",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _predict_grpc(args: argparse.Namespace, token: str | None, images: list[bytes]) -> tuple:
    """gRPC Predictions; TorchServe drops per-request HTTP codes over gRPC, so a handler error
    object in the answer (it has ``code`` and ``message``) is reported as that status."""
    from concurrent.futures import ThreadPoolExecutor

    from distillserve.serving.grpc_client import GrpcClient
    from distillserve.serving.rest import Prediction
    from distillserve.serving.server import read_properties

    if not Path(args.config).is_file():
        raise DistillServeError(
            f"--grpc takes the gRPC address from the server's config, and {args.config} does "
            "not exist: pass --config CONFIG.properties"
        )
    props = read_properties(args.config)
    host = props.get("grpc_inference_address", "127.0.0.1")
    address = f"{host}:{props.get('grpc_inference_port', '7070')}"

    def one(client: GrpcClient, image: bytes) -> Prediction:
        body = client.predict(args.model, image, args.version)
        is_error = isinstance(body, dict) and {"code", "message"} <= set(body)
        return Prediction(int(body["code"]) if is_error else 200, body)

    with (
        GrpcClient(address, inference_token=token, timeout=args.timeout) as client,
        ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool,
    ):
        return list(pool.map(lambda image: one(client, image), images)), client.retrier.stats


def _load(args: argparse.Namespace) -> int:
    from distillserve.serving.load import NO_RETRY, format_report, run_load
    from distillserve.serving.rest import read_key
    from distillserve.serving.server import read_properties

    if args.target.startswith(("http://", "https://")):
        base, _, model = args.target.rstrip("/").partition("/predictions/")
        if not model:
            raise DistillServeError(
                "a URL target must look like http://HOST:PORT/predictions/MODEL"
            )
        management = args.management_url
    else:
        props = read_properties(args.config)
        base = props.get("inference_address", "http://127.0.0.1:8080")
        management = args.management_url or props.get("management_address")
        model = args.target
    key_file = args.key_file or Path(args.run_dir) / "key_file.json"
    token = None if args.no_token else read_key(key_file, "inference")
    management_token = None
    if args.kill_worker_after is not None and not args.no_token:
        management_token = read_key(key_file, "management")
    payloads = _load_payloads(args.images)
    report = run_load(
        base,
        model,
        payloads,
        total=args.requests,
        concurrency=args.concurrency,
        token=token,
        time_limit_s=args.time_limit,
        kill_worker_after_s=args.kill_worker_after,
        management_url=management,
        management_token=management_token,
        retry=NO_RETRY if args.no_retry else None,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.errors and not args.no_retry else 0


def _load_payloads(images: str | None) -> list[bytes]:
    """Image files from a directory, or the bundled digits test split as PNG."""
    if images:
        folder = Path(images)
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        if not files:
            raise DistillServeError(f"no image files in {folder}")
        return [p.read_bytes() for p in files]
    from distillserve.scripts.demo import encode_png
    from distillserve.students.data import load_splits
    from distillserve.students.recipe import DataConfig

    test = load_splits(DataConfig(), seed=0).test
    return [encode_png(test[i][0]) for i in range(len(test))]


def _server_args(p: argparse.ArgumentParser) -> None:
    """Where the server is and how to authenticate: shared by the management verbs."""
    p.add_argument("--config", default="config.properties", help="for addresses and model_store")
    p.add_argument("--run-dir", default="build/serve", help="where key_file.json is")
    p.add_argument("--key-file", help="path of key_file.json (overrides --run-dir)")
    p.add_argument("--model-store", help="override model_store from the config")


def _management(args: argparse.Namespace):
    from distillserve.serving.management import ManagementClient
    from distillserve.serving.rest import read_key
    from distillserve.serving.server import read_properties

    props = read_properties(args.config)
    key_file = args.key_file or Path(args.run_dir) / "key_file.json"
    client = ManagementClient(
        props.get("management_address", "http://127.0.0.1:8081"), read_key(key_file, "management")
    )
    store = Path(args.model_store or props.get("model_store", "model_store"))
    if not store.is_absolute():
        store = Path(args.config).resolve().parent / store
    return client, store


def _register(args: argparse.Namespace) -> int:
    from distillserve.serving.versions import register_archive

    client, store = _management(args)
    result = register_archive(
        client,
        store,
        Path(args.mar),
        model_name=args.model_name,
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        initial_workers=args.initial_workers,
        make_default=args.set_default,
    )
    print(f"registered {result['model_name']} {result['version']} from {result['file']}")
    return 0


def _set_default(args: argparse.Namespace) -> int:
    from distillserve.serving.versions import set_default

    client, store = _management(args)
    set_default(client, store, args.model, args.version)
    print(f"{args.model}: default version is now {args.version}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    client, _ = _management(args)
    client.scale(args.model, args.version, min_worker=args.min, max_worker=args.max)
    print(f"{args.model}: workers scaled to min {args.min}, max {args.max or args.min}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    from distillserve.serving.versions import unregister

    client, store = _management(args)
    unregister(client, store, args.model, args.version)
    print(f"unregistered {args.model} {args.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from distillserve.serving.versions import rollback

    client, store = _management(args)
    retired, restored = rollback(client, store, args.model)
    print(f"{args.model}: default is {restored} again; {retired} unregistered")
    return 0


def _list(args: argparse.Namespace) -> int:
    client, _ = _management(args)
    for model in client.list_models():
        versions = client.describe(model["modelName"], "all")
        default = client.default_version(model["modelName"])
        for v in versions:
            workers = ",".join(w.get("status", "?") for w in v.get("workers", []))
            mark = "*" if v["modelVersion"] == default else " "
            print(
                f"{model['modelName']:<24}{v['modelVersion']:<10}{mark} batch {v['batchSize']:<3}"
                f" delay {v['maxBatchDelay']:<5} workers [{workers}]"
            )
    return 0


def _describe(args: argparse.Namespace) -> int:
    client, _ = _management(args)
    print(json.dumps(client.describe(args.model, args.version), indent=2))
    return 0


def _models(args: argparse.Namespace) -> int:
    from distillserve.archiver import Registry

    print(Registry(args.model_store).table())
    return 0


def _ab(args: argparse.Namespace) -> int:
    from distillserve.serving.ab import format_ab, run_ab
    from distillserve.serving.rest import InferenceClient, read_key
    from distillserve.serving.server import read_properties

    url = args.url or read_properties(args.config).get("inference_address", "http://127.0.0.1:8080")
    key_file = args.key_file or Path(args.run_dir) / "key_file.json"
    client = InferenceClient(url, read_key(key_file, "inference"))
    report = run_ab(client, args.model, args.v1, args.v2, Path(args.data_dir), args.concurrency)
    print(json.dumps(report, indent=2) if args.json else format_ab(report))
    return 0


def _export_kserve(args: argparse.Namespace) -> int:
    from distillserve.archiver.kserve import export_kserve

    out = export_kserve(
        [Path(m) for m in args.mars],
        Path(args.out),
        name=args.name,
        image=args.image,
        storage_uri=args.storage_uri,
    )
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from distillserve.scripts.demo import run_demo

    run_demo(args.recipe, args.config, args.out, args.model_store, args.concurrency)
    return 0


def _teacher_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher-cache",
        default="build/teacher-cache",
        help="reuse trained teachers from this folder when seed, data and teacher settings "
        "match (default: build/teacher-cache)",
    )
    p.add_argument(
        "--no-teacher-cache", action="store_true", help="always train the teacher afresh"
    )


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillserve",
        description="Distill image models into small int8 students and serve them with TorchServe.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "build", help="train/distill/quantize/export a recipe into build/NAME/VERSION/"
    )
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/digits.yaml")
    p.add_argument("--out", default="build", help="output root (default: build)")
    _teacher_cache_args(p)
    p.set_defaults(func=_build)

    p = verbs.add_parser(
        "compare", help="build several recipes; table, JSON and Pareto plot of their students"
    )
    p.add_argument("recipes", nargs="+", help="recipe files, e.g. recipes/digits*.yaml")
    p.add_argument("--out", default="build/compare", help="output folder (default: build/compare)")
    _teacher_cache_args(p)
    p.set_defaults(func=_compare)

    p = verbs.add_parser(
        "bench", help="measure models, handler and served throughput; JSON, plots, summary"
    )
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run (CI)")
    p.add_argument("--out", default="bench/results", help="results folder (default: bench/results)")
    p.add_argument("--recipe", default="recipes/digits.yaml", help="the digits pipeline to time")
    p.add_argument("--work", default="build/bench", help="scratch folder (default: build/bench)")
    p.add_argument("--readme", help="write the summary into this README's Performance section")
    p.set_defaults(func=_bench)

    p = verbs.add_parser("archive", help="package a student artifact directory as a .mar")
    p.add_argument("artifact_dir", help="e.g. build/digits/1.0 or build/digits/1.0/teacher")
    p.add_argument("--model-store", default="model_store", help="where the .mar goes")
    p.add_argument("--model-name", help="override the recipe's archive.model_name")
    p.add_argument("--version", help="override the recipe's archive.version")
    p.add_argument("--file-name", help="archive file name (default: MODEL_NAME.mar)")
    p.set_defaults(func=_archive)

    p = verbs.add_parser("serve", help="start, stop or inspect TorchServe")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--config", default="config.properties", help="TorchServe config file")
    p.add_argument(
        "--run-dir",
        default="build/serve",
        help="private TMPDIR, logs and key_file.json of this server (default: build/serve)",
    )
    p.add_argument("--model-store", help="override model_store from the config")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(func=_serve)

    p = verbs.add_parser("predict", help="classify images through TorchServe's REST API")
    p.add_argument("model", help="registered model name, e.g. digits-student")
    p.add_argument("images", nargs="+", help="image files or directories")
    p.add_argument("--version", help="model version (default: the default version)")
    p.add_argument("--url", help="inference address (default: from --config)")
    p.add_argument("--config", default="config.properties")
    p.add_argument("--run-dir", default="build/serve", help="where key_file.json is")
    p.add_argument("--key-file", help="path of key_file.json (overrides --run-dir)")
    p.add_argument("--no-token", action="store_true", help="send no Authorization header")
    p.add_argument("--grpc", action="store_true", help="use the gRPC inference API")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=_predict)

    p = verbs.add_parser("register", help="verify a .mar and register it as a model version")
    p.add_argument("mar", help="path of the .mar (copied into the model store if elsewhere)")
    p.add_argument("--model-name", help="register under this name (default: the archive's)")
    p.add_argument("--batch-size", type=int, help="server-side batch size")
    p.add_argument("--max-batch-delay", type=int, help="ms to wait for a batch to fill")
    p.add_argument("--initial-workers", type=int, default=1)
    p.add_argument("--set-default", action="store_true", help="make it the default version")
    _server_args(p)
    p.set_defaults(func=_register)

    p = verbs.add_parser("set-default", help="make a registered version the default")
    p.add_argument("model")
    p.add_argument("version")
    _server_args(p)
    p.set_defaults(func=_set_default)

    p = verbs.add_parser("scale", help="set the min/max workers of a model (version)")
    p.add_argument("model")
    p.add_argument("--version", help="default: the default version")
    p.add_argument("--min", type=int, required=True, help="minimum workers")
    p.add_argument("--max", type=int, help="maximum workers (default: --min)")
    _server_args(p)
    p.set_defaults(func=_scale)

    p = verbs.add_parser("unregister", help="remove a model version from the server")
    p.add_argument("model")
    p.add_argument("version")
    _server_args(p)
    p.set_defaults(func=_unregister)

    p = verbs.add_parser("rollback", help="make the previous version default, retire the current")
    p.add_argument("model")
    _server_args(p)
    p.set_defaults(func=_rollback)

    p = verbs.add_parser("list", help="models and versions on the server, default marked *")
    _server_args(p)
    p.set_defaults(func=_list)

    p = verbs.add_parser("describe", help="TorchServe's description of a model (JSON)")
    p.add_argument("model")
    p.add_argument("--version", default="all", help="a version, or all (default)")
    _server_args(p)
    p.set_defaults(func=_describe)

    p = verbs.add_parser("models", help="the model store's index (model_store/index.json)")
    p.add_argument("--model-store", default="model_store")
    p.set_defaults(func=_models)

    p = verbs.add_parser("ab", help="compare two versions of a model on labelled images")
    p.add_argument("model")
    p.add_argument("v1")
    p.add_argument("v2")
    p.add_argument("data_dir", help="DATA_DIR/LABEL/image files")
    p.add_argument("--url", help="inference address (default: from --config)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _server_args(p)
    p.set_defaults(func=_ab)

    p = verbs.add_parser(
        "export-kserve", help="write the KServe / Kubernetes layout and manifests for archives"
    )
    p.add_argument("mars", nargs="+", help=".mar files to deploy")
    p.add_argument("--out", default="build/kserve", help="output directory (default build/kserve)")
    p.add_argument("--name", default="distillserve", help="name of the service and manifests")
    p.add_argument("--image", default="pytorch/torchserve:0.12.0-cpu")
    p.add_argument(
        "--storage-uri",
        default="pvc://distillserve-models",
        help="where config/ and model-store/ are uploaded",
    )
    p.set_defaults(func=_export_kserve)

    p = verbs.add_parser(
        "load", help="bounded load (and optional worker-kill fault check) on a loopback server"
    )
    p.add_argument("target", help="model name, or http://127.0.0.1:PORT/predictions/MODEL")
    p.add_argument("--requests", type=int, default=1000, help="requests to send (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    p.add_argument("--time-limit", type=float, default=300.0, help="stop after this many seconds")
    p.add_argument("--images", help="directory of images to send (default: digits test split)")
    p.add_argument(
        "--kill-worker-after",
        type=float,
        metavar="SECONDS",
        help="fault check: kill one worker of the model this long into the run",
    )
    p.add_argument("--config", default="config.properties", help="for the addresses")
    p.add_argument("--run-dir", default="build/serve", help="where key_file.json is")
    p.add_argument("--key-file", help="path of key_file.json (overrides --run-dir)")
    p.add_argument("--management-url", help="management address (default: from --config)")
    p.add_argument("--no-token", action="store_true", help="send no Authorization header")
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="do not retry requests whose worker died (503/507) or whose connection broke",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_load)

    p = verbs.add_parser("demo", help="build, archive, serve and query the digits models; report")
    p.add_argument("--recipe", default="recipes/digits.yaml")
    p.add_argument("--config", default="config.properties")
    p.add_argument("--out", default="build")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--concurrency", type=int, default=16)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return args.func(args)
    except DistillServeError as err:
        print(f"distillserve {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distillserve {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
