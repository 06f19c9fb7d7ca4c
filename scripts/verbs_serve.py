"""Verbs that run and query a server: serve, predict, load, ab."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillserve.errors import DistillServeError, ServerError
from distillserve.scripts.options import (
    add_server_options,
    add_trust_options,
    connection,
    trust_of,
)
from distillserve.scripts.verbs_triton import (
    ab_triton,
    add_engine_option,
    load_triton,
    predict_triton,
    serve_triton,
)

__all__ = ["add_verbs"]


def _serve(args: argparse.Namespace) -> int:
    from distillserve.serving.server import TorchServe

    if args.engine == "triton" or (Path(args.run_dir) / "engine.json").exists():
        return serve_triton(args)
    if args.repository or args.torch != "auto":
        flag = "--repository" if args.repository else f"--{args.torch}-torch"
        raise DistillServeError(f"{flag} goes with --engine triton")
    store, archives = args.model_store, None
    if args.models:
        if args.action != "start":
            raise DistillServeError("--models goes with serve start")
        from distillserve.serving.startup import resolve_archives

        found = TorchServe(args.config, args.run_dir, args.model_store).model_store
        store, archives = resolve_archives(args.models, found)
    trust = trust_of(args) if args.action == "start" else None
    server = TorchServe(args.config, args.run_dir, store, archives, trust)
    if args.action == "start":
        from distillserve.serving.versions import record_startup

        if archives:
            print(f"serving {', '.join(archives)} from {store}")
        server.start(timeout=args.timeout)
        record_startup(server.management_client(), server.model_store)
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


def _image_files(items: list[str]) -> list[Path]:
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            paths.append(path)
        else:
            raise DistillServeError(f"image not found: {path}")
    if not paths:
        raise DistillServeError("no image files given (a text model takes --text or --text-file)")
    return paths


def _texts(args: argparse.Namespace) -> list[str]:
    """The texts to classify: each ``--text``, then each non-empty line of ``--text-file``."""
    texts = list(args.text or [])
    if args.text_file:
        path = Path(args.text_file)
        if not path.is_file():
            raise DistillServeError(f"--text-file: file not found: {path}")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts


def _predict(args: argparse.Namespace) -> int:
    texts = _texts(args)
    if texts and args.images:
        raise DistillServeError("give image files or --text/--text-file, not both")
    paths = [] if texts else _image_files(args.images)
    if args.engine == "triton":
        payloads = [t.encode("utf-8") for t in texts] or [p.read_bytes() for p in paths]
        results = predict_triton(args, payloads, text=bool(texts))
        return _report(results, [("text", t) for t in texts] or [("file", str(p)) for p in paths])
    if args.grpc and not Path(args.config).is_file():
        raise DistillServeError(
            f"--grpc takes the gRPC address from the server's config, and {args.config} does "
            "not exist: pass --config CONFIG.properties"
        )
    server = connection(args)
    images = [t.encode("utf-8") for t in texts] or [p.read_bytes() for p in paths]
    try:
        if args.grpc:
            with server.grpc_client(timeout=args.timeout) as client:
                results = client.predict_many(args.model, images, args.concurrency, args.version)
                stats = client.retrier.stats
        else:
            client = server.inference_client(timeout=args.timeout)
            results = client.predict_many(args.model, images, args.concurrency, args.version)
            stats = client.retry_stats
    except ServerError as err:
        _raise_if_unknown(server, args, err.status, err.code, str(err))
        raise
    for result in results:
        _raise_if_unknown(server, args, result.status, None, str(result.body.get("message", "")))
    sources = [("text", t) for t in texts] or [("file", str(p)) for p in paths]
    retries = f"{stats.retries} retries ({stats.retried_calls} requests retried)"
    return _report(results, sources, retries)


def _report(results: list, sources: list[tuple[str, str]], retries: str = "") -> int:
    """A JSON line per answer, then the count on stderr; 1 when any failed."""
    failed = 0
    for (kind, source), result in zip(sources, results):
        print(
            json.dumps({kind: source, "status": result.status, "result": result.body}),
            flush=True,
        )
        failed += not result.ok
    kind = "texts" if sources and sources[0][0] == "text" else "images"
    print(f"{len(results)} {kind}, {failed} failed" + (f"; {retries}" if retries else ""),
          file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def _raise_if_unknown(server, args, status: int | None, code: str | None, message: str) -> None:
    """An answer that says the model or version is not registered becomes one line that lists
    what the server has (through the management API)."""
    from distillserve.serving.versions import is_unknown_model, unknown_model_error

    if is_unknown_model(status, code, message):
        raise unknown_model_error(server.management_client(), args.model, args.version)


def _load_payloads(images: str | None) -> list[bytes]:
    """Image files from a directory, or the bundled digits test split as PNG."""
    if not images:
        from distillserve.students.data import digits_test_pngs

        return digits_test_pngs()
    folder = Path(images)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise DistillServeError(f"no image files in {folder}")
    return [p.read_bytes() for p in files]


def _load(args: argparse.Namespace) -> int:
    from distillserve.serving.load import NO_RETRY, format_report, parse_target, run_load

    if args.engine == "triton":
        return load_triton(args, _load_payloads(args.images))
    base, model = parse_target(args.target)
    server = connection(args, config_optional=base is not None)
    if base is None:  # a model of the configured server: refuse a name it does not have
        from distillserve.serving.versions import require_version

        try:
            require_version(server.management_client(), model, None)
        except ServerError:
            pass  # the management API is not reachable: the load reports what it finds
    fault = args.kill_worker_after is not None
    report = run_load(
        base or server.inference_url,
        model,
        _load_payloads(args.images),
        total=args.requests,
        concurrency=args.concurrency,
        token=server.token("inference"),
        time_limit_s=args.time_limit,
        kill_worker_after_s=args.kill_worker_after,
        management_url=args.management_url or (None if base else server.management_url),
        management_token=server.token("management") if fault else None,
        retry=NO_RETRY if args.no_retry else None,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.errors and not args.no_retry else 0


def _ab(args: argparse.Namespace) -> int:
    from distillserve.serving.ab import format_ab, run_ab
    from distillserve.serving.versions import require_version

    if args.engine == "triton":
        return ab_triton(args)
    server = connection(args)
    management = server.management_client()
    for version in (args.v1, args.v2):
        require_version(management, args.model, version)
    client = server.inference_client()
    report = run_ab(client, args.model, args.v1, args.v2, Path(args.data_dir), args.concurrency)
    print(json.dumps(report, indent=2) if args.json else format_ab(report))
    return 0


def add_verbs(verbs) -> None:
    p = verbs.add_parser("serve", help="start, stop or inspect TorchServe (or Triton)")
    p.add_argument("action", choices=("start", "stop", "status"))
    add_engine_option(p)
    p.add_argument(
        "--repository",
        help="--engine triton: serve this model repository (distillserve export-triton) "
        "instead of exporting --models into the run directory",
    )
    torch_env = p.add_mutually_exclusive_group()
    torch_env.add_argument(
        "--without-torch",
        dest="torch",
        action="store_const",
        const="without",
        default="auto",
        help="--engine triton: run the models where torch cannot be imported, as on a host "
        "without it (ONNX students serve there; others refuse to load, saying why). The "
        "default when every model is ONNX",
    )
    torch_env.add_argument(
        "--with-torch",
        dest="torch",
        action="store_const",
        const="with",
        help="--engine triton: run the models where torch can be imported, even when every "
        "model is ONNX (to register TorchScript or .pt2 versions later)",
    )
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.add_argument(
        "--models",
        action="append",
        metavar="A.mar,B.mar|DIR",
        help="serve these archives (comma-separated .mar files in one folder, or a folder of "
        "them) instead of the config's load_models, with the config's security and ports; "
        "each archive's own model-config.yaml sets its batching and workers",
    )
    add_server_options(p, auth=False)
    add_trust_options(p)
    p.set_defaults(func=_serve)

    p = verbs.add_parser(
        "predict", help="classify images or texts through TorchServe (REST or gRPC)"
    )
    p.add_argument("model", help="registered model name, e.g. digits-student")
    p.add_argument("images", nargs="*", help="image files or directories")
    p.add_argument(
        "--text", action="append", help="a text to classify (a text model; may be repeated)"
    )
    p.add_argument("--text-file", help="a UTF-8 file of texts to classify, one per line")
    p.add_argument("--version", help="model version (default: the default version)")
    p.add_argument("--grpc", action="store_true", help="use the gRPC inference API")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0)
    add_engine_option(p)
    add_server_options(p, url=True)
    p.set_defaults(func=_predict)

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
    p.add_argument("--management-url", help="management address (default: from --config)")
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="do not retry requests whose worker died (503/507) or whose connection broke",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_engine_option(p)
    add_server_options(p)
    p.set_defaults(func=_load)

    p = verbs.add_parser("ab", help="compare two versions of a model on labelled images")
    p.add_argument("model")
    p.add_argument("v1")
    p.add_argument("v2")
    p.add_argument("data_dir", help="DATA_DIR/LABEL/image files")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_engine_option(p)
    add_server_options(p, url=True)
    p.set_defaults(func=_ab)
