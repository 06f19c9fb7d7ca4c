"""The Triton engine's verbs: ``export-triton`` and ``serve ... --engine triton`` (``serve``
dispatches here), ``predict ... --engine triton``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distillserve.errors import DistillServeError
from distillserve.scripts.options import add_deployment_options, add_trust_options, trust_of

__all__ = [
    "ab_triton",
    "add_verbs",
    "load_triton",
    "predict_triton",
    "refuse_on_triton",
    "serve_triton",
    "versions_on_triton",
]


def _archives(items: list[str]) -> list[Path]:
    """``.mar`` files from paths, comma-separated lists, or folders of them."""
    found: list[Path] = []
    for item in items:
        for part in filter(None, item.split(",")):
            path = Path(part)
            if path.is_dir():
                found += sorted(path.glob("*.mar"))
            elif path.is_file():
                found.append(path)
            else:
                raise DistillServeError(f"archive not found: {path}")
    if not found:
        raise DistillServeError("no .mar archives given")
    return found


def _export_triton(args: argparse.Namespace) -> int:
    from distillserve.archiver.kserve_common import POD_CORES
    from distillserve.archiver.triton import export_triton, instances_served

    out = Path(args.out)
    archives, trust = _archives(args.mars), trust_of(args)
    if args.cores is not None and args.cores < 1:
        raise DistillServeError(f"--cores must be >= 1, not {args.cores}")
    cores = args.cores or (POD_CORES if args.deploy else None)
    models = export_triton(archives, out, trust, force=args.force, cores=cores)
    for model in models:
        count, per_core = instances_served(model.path)
        why = ", one per core of the serving host" if per_core else ""
        plural = "s" if count != 1 else ""
        print(f"{model.path} ({model.name} {model.archive_version}, {count} instance{plural}{why})")
    print(
        f"wrote a Triton model repository of {len(models)} models to {out}; serve it with: "
        f"distillserve serve start --engine triton --repository {out}"
    )
    if args.deploy:
        from distillserve.archiver.triton_deploy import export_triton_deploy

        deploy = export_triton_deploy(
            archives,
            out,
            Path(args.deploy),
            name=args.name,
            image=args.image,
            storage_uri=args.storage_uri,
            trust=trust,
        )
        files = sorted(p for p in deploy.rglob("*") if p.is_file())
        print(
            f"wrote the image's Dockerfile and the Kubernetes / KServe manifests to {deploy} "
            f"({len(files)} files); see {deploy / 'README.md'}"
        )
    return 0


def _addresses(config: str):
    """Triton's ports from the serving config: its inference, gRPC inference and metrics
    ports (Triton's HTTP answers KServe v2 on the inference port)."""
    from urllib.parse import urlparse

    from distillserve.archiver.properties import read_properties
    from distillserve.serving.triton_engine import TritonAddresses

    if not Path(config).is_file():
        return TritonAddresses()
    props = read_properties(Path(config))
    inference = urlparse(props.get("inference_address", "http://127.0.0.1:8080"))
    metrics = urlparse(props.get("metrics_address", "http://127.0.0.1:8082"))
    return TritonAddresses(
        inference.hostname or "127.0.0.1",
        inference.port or 8080,
        int(props.get("grpc_inference_port", 7070)),
        metrics.port or 8082,
    )


def serve_triton(args: argparse.Namespace) -> int:
    """``serve start|stop|status --engine triton``."""
    from distillserve.archiver.triton import export_triton
    from distillserve.serving.triton_engine import TritonEngine

    run_dir = Path(args.run_dir)
    if args.action != "start":
        if not (run_dir / "engine.json").exists():
            print("not running" if args.action == "stop" else json.dumps({"running": False}))
            return 0 if args.action == "stop" else 3
        engine = TritonEngine.attach(run_dir)
        if args.action == "stop":
            print("stopped" if engine.stop() else "not running")
            return 0
        status = engine.status()
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 3
    trust = trust_of(args)
    repository = Path(args.repository) if args.repository else run_dir / "repository"
    if not args.repository:
        if not args.models:
            raise DistillServeError("serve start --engine triton needs --models or --repository")
        models = export_triton(_archives(args.models), repository, trust, force=True)
        print(f"serving {', '.join(m.name for m in models)} from {repository}")
    torch_choice = {"with": False, "without": True}.get(args.torch)  # auto: None
    engine = TritonEngine(
        repository, run_dir, _addresses(args.config), trust, without_torch=torch_choice
    )
    engine.start(timeout=args.timeout)
    a = engine.addresses
    where = " (models without torch)" if engine.without_torch else ""
    print(f"Triton ready{where}: HTTP {a.http_url}, gRPC {a.grpc_target}, metrics {a.metrics_url}")
    print(f"logs: {engine.log_file}; stop with: distillserve serve stop --run-dir {run_dir}")
    return 0


def predict_triton(args: argparse.Namespace, payloads: list[bytes], text: bool) -> list:
    """Each payload classified by the Triton engine in ``--run-dir`` over KServe v2 (HTTP, or
    gRPC with ``--grpc``): ``(status, body)`` per payload, a refused one with its error."""
    from distillserve.serving.triton_client import TritonClient
    from distillserve.serving.triton_versions import number_of

    engine = _attached(args.run_dir)
    number = number_of(engine, args.model, args.version) if args.version else ""
    client = TritonClient(engine.addresses, grpc=args.grpc, timeout=args.timeout)
    return client.predict_many(
        args.model, payloads, text=text, concurrency=args.concurrency, version=number
    )


# What TorchServe's management API does that the Triton engine does not
_NO_DEFAULT = (
    "Triton answers an unversioned request with a model's newest version: rollback retires "
    "the newest, register adds one"
)


def refuse_on_triton(args: argparse.Namespace, verb: str, why: str = "") -> None:
    """A verb that needs TorchServe's management API, asked of the Triton engine: one line
    saying so, and why."""
    if getattr(args, "engine", "torchserve") == "triton":
        raise DistillServeError(
            f"{verb} works with TorchServe only{': ' + why if why else ''} "
            "(the Triton engine: register, unregister, rollback, scale, list, describe, ab)"
        )


def versions_on_triton(args: argparse.Namespace, verb: str) -> int:
    """The version verbs on the Triton engine in ``--run-dir``, through its model-repository
    API (``serving.triton_versions``): register, unregister, rollback, scale, list, describe
    (``ab``: ``ab_triton``). ``set-default`` and ``models`` are refused in one line saying
    why."""
    from distillserve.serving import triton_versions

    if verb == "set-default" or getattr(args, "set_default", False):
        refuse_on_triton(args, "set-default", _NO_DEFAULT)
    if verb == "models":
        refuse_on_triton(args, verb, "it lists TorchServe's model store")
    engine = _attached(args.run_dir)
    if verb == "describe":
        print(json.dumps(engine.describe(args.model), indent=2))
    elif verb == "register":
        _batch_options_refused(args)
        got = triton_versions.register(engine, Path(args.mar), trust_of(args), args.model_name)
        print(f"registered {got.model} {got.archive_version} as Triton version {got.number} "
              "(now the default)")  # fmt: skip
    elif verb == "unregister":
        triton_versions.unregister(engine, args.model, args.version)
        print(f"unregistered {args.model} {args.version}")
    elif verb == "rollback":
        retired, restored = triton_versions.rollback(engine, args.model)
        print(f"{args.model}: default is {restored} again; {retired} unregistered")
    elif verb == "scale":
        if args.version:
            refuse_on_triton(args, "scale --version", "Triton scales every version of a model")
        triton_versions.scale(engine, args.model, args.max or args.min)
        print(f"{args.model}: {args.max or args.min} model instances on Triton")
    else:
        rows = [f"{'model':<32} {'version':>7}  {'state':<12} archive"]
        for v in triton_versions.versions(engine):
            rows.append(f"{v.model:<32} {v.number:>7}  {v.state:<12} "
                        f"{v.archive_version}{' *' if v.default else ''}")  # fmt: skip
        print("\n".join(rows))
    return 0


def _batch_options_refused(args: argparse.Namespace) -> None:
    """Triton takes batch settings and instances from the archive (``scale`` changes the
    instances), not from register's options."""
    given = [f"--{k.replace('_', '-')}" for k in ("batch_size", "max_batch_delay")
             if getattr(args, k, None) is not None]  # fmt: skip
    if given:
        raise DistillServeError(
            f"register --engine triton takes the batch settings from the archive, not "
            f"{', '.join(given)} (archive it again with them)"
        )


def ab_triton(args: argparse.Namespace) -> int:
    """``ab --engine triton``: two archive versions of a model on the engine, each asked at
    its own Triton version, on the same labelled images."""
    from distillserve.serving.ab import format_ab, run_ab
    from distillserve.serving.triton_client import TritonClient, VersionedTritonClient
    from distillserve.serving.triton_versions import number_of

    engine = _attached(args.run_dir)
    # each archive version's Triton number, read once (an unknown one: one line naming the others)
    numbers = {v: number_of(engine, args.model, v) for v in (args.v1, args.v2)}
    client = VersionedTritonClient(TritonClient(engine.addresses), numbers.__getitem__)
    report = run_ab(client, args.model, args.v1, args.v2, Path(args.data_dir), args.concurrency)
    print(json.dumps(report, indent=2) if args.json else format_ab(report))
    return 0


def _attached(run_dir: str):
    """The Triton engine ``serve start --engine triton`` left running in ``run_dir``."""
    from distillserve.serving.triton_engine import TritonEngine

    engine = TritonEngine.attach(run_dir) if (Path(run_dir) / "engine.json").exists() else None
    if engine is None or engine.pid() is None:
        raise DistillServeError(
            f"no Triton engine running from {run_dir} (serve start --engine triton)"
        )
    return engine


def load_triton(args: argparse.Namespace, images: list[bytes]) -> int:
    """``load --engine triton``: the bounded load as KServe v2 JSON requests (input
    ``images``) to the engine in ``--run-dir``; the worker-kill fault check stays
    TorchServe's."""
    from distillserve.serving.load import NO_RETRY, format_report, run_load, v2_image_bodies

    if args.kill_worker_after is not None:
        raise DistillServeError("--kill-worker-after works with TorchServe only (its workers)")
    if "/" in args.target:
        raise DistillServeError(
            "load --engine triton takes a model name (of the engine in --run-dir)"
        )
    engine = _attached(args.run_dir)
    engine.describe(args.target, ("metadata",))  # an unknown model: one line naming the rest
    report = run_load(
        engine.addresses.http_url,
        args.target,
        v2_image_bodies(images),
        total=args.requests,
        concurrency=args.concurrency,
        time_limit_s=args.time_limit,
        retry=NO_RETRY if args.no_retry else None,
        route="v2",
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.errors and not args.no_retry else 0


def add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("torchserve", "triton"),
        default="torchserve",
        help="the serving engine (default: %(default)s)",
    )


def add_verbs(verbs) -> None:
    p = verbs.add_parser(
        "export-triton", help="write a Triton model repository (Python backend) for archives"
    )
    p.add_argument("mars", nargs="+", help=".mar files (or folders of them) to serve")
    p.add_argument("--out", default="build/triton", help="repository folder (default %(default)s)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.add_argument(
        "--deploy",
        metavar="DIR",
        help="also write the image's Dockerfile and the Kubernetes and KServe (Triton runtime) "
        "manifests for the repository into DIR",
    )
    add_deployment_options(p, "distillserve-triton:2.51-torchVERSION", "the repository")
    p.add_argument(
        "--cores",
        type=int,
        help="cores of the host that will serve the repository: one model instance each for "
        "archives whose workers are 'auto' (default: with --deploy the pods' CPU limit, "
        "otherwise this host's usable cores)",
    )
    p.add_argument(
        "--config",
        default="config.properties",
        help="serving config whose distillserve_public_key verifies the archives "
        "(default: %(default)s)",
    )
    add_trust_options(p)
    p.set_defaults(func=_export_triton)
