"""The Triton engine's verbs: ``export-triton`` and ``serve ... --engine triton`` (``serve``
dispatches here), ``predict ... --engine triton``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distillserve.errors import DistillServeError
from distillserve.scripts.options import add_trust_options, trust_of

__all__ = ["add_verbs", "predict_triton", "refuse_on_triton", "serve_triton"]


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
    from distillserve.archiver.triton import export_triton

    out = Path(args.out)
    models = export_triton(_archives(args.mars), out, trust_of(args), force=args.force)
    for model in models:
        print(f"{model.path} ({model.name} {model.archive_version})")
    print(
        f"wrote a Triton model repository of {len(models)} models to {out}; serve it with: "
        f"distillserve serve start --engine triton --repository {out}"
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
    engine = TritonEngine(repository, run_dir, _addresses(args.config), trust)
    engine.start(timeout=args.timeout)
    a = engine.addresses
    print(f"Triton ready: HTTP {a.http_url}, gRPC {a.grpc_target}, metrics {a.metrics_url}")
    print(f"logs: {engine.log_file}; stop with: distillserve serve stop --run-dir {run_dir}")
    return 0


def predict_triton(args: argparse.Namespace, payloads: list[bytes], text: bool) -> list:
    """Each payload classified by the Triton engine in ``--run-dir`` over KServe v2 (HTTP, or
    gRPC with ``--grpc``): ``(status, body)`` per payload, a refused one with its error."""
    from distillserve.serving.triton_client import TritonClient
    from distillserve.serving.triton_engine import TritonEngine

    engine = TritonEngine.attach(args.run_dir)
    client = TritonClient(engine.addresses, grpc=args.grpc, timeout=args.timeout)
    return client.predict_many(args.model, payloads, text=text, concurrency=args.concurrency)


def refuse_on_triton(args: argparse.Namespace, verb: str) -> None:
    """A TorchServe-only verb asked of the Triton engine: one line saying so."""
    if getattr(args, "engine", "torchserve") == "triton":
        raise DistillServeError(
            f"{verb} works with TorchServe only (Triton has no management API for it here): "
            "use predict, or Triton's own endpoints"
        )


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
        "--config",
        default="config.properties",
        help="serving config whose distillserve_public_key verifies the archives "
        "(default: %(default)s)",
    )
    add_trust_options(p)
    p.set_defaults(func=_export_triton)
