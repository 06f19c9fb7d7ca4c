"""The command-line options every verb that talks to a server shares, and the one way to make a
``Connection`` (and so its clients) from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from distillserve.archiver.properties import read_properties
from distillserve.archiver.signing import Trust
from distillserve.serving.connect import Connection

__all__ = [
    "add_deployment_options",
    "add_server_options",
    "add_trust_options",
    "connection",
    "teacher_cache_options",
    "trust_of",
]


def add_server_options(p: argparse.ArgumentParser, auth: bool = True, url: bool = False) -> None:
    """Where the server is (config, run directory, model store) and, with ``auth``, how to
    authenticate; ``url`` adds ``--url`` for the inference verbs."""
    group = p.add_argument_group("server")
    group.add_argument(
        "--config",
        default="config.properties",
        help="the server's config.properties: addresses and model_store (default: %(default)s)",
    )
    group.add_argument(
        "--run-dir",
        default="build/serve",
        help="the server's run directory, where key_file.json is (default: %(default)s)",
    )
    group.add_argument("--model-store", help="override model_store from the config")
    if auth:
        group.add_argument("--key-file", help="path of key_file.json (overrides --run-dir)")
        group.add_argument("--no-token", action="store_true", help="send no Authorization header")
    if url:
        group.add_argument("--url", help="inference address (default: from --config)")


def connection(args: argparse.Namespace, config_optional: bool = False) -> Connection:
    """The server named by ``add_server_options``'s options (``config_optional`` when the
    caller was given the server's URL)."""
    return Connection.make(
        args.config,
        args.run_dir,
        key_file=args.key_file,
        model_store=args.model_store,
        url=getattr(args, "url", None),
        token_auth=not args.no_token,
        config_optional=config_optional,
    )


def add_trust_options(p: argparse.ArgumentParser) -> None:
    """Which archives a verb that hands them to a server accepts."""
    group = p.add_argument_group("archive signatures")
    group.add_argument(
        "--public-key",
        help="verify archives with this public key (default: DISTILLSERVE_PUBLIC_KEY, then "
        "distillserve_public_key in --config, then keys/archive-signing.pub.pem)",
    )
    group.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept archives without a signature (signed ones must still verify)",
    )


def trust_of(args: argparse.Namespace) -> Trust:
    """The ``Trust`` of ``add_trust_options``'s flags and the serving config (``--config``)."""
    config = Path(getattr(args, "config", None) or "config.properties")
    props = read_properties(config) if config.is_file() else {}
    return Trust.resolve(args.public_key, args.allow_unsigned, props, config.resolve().parent)


def teacher_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher-cache",
        default="build/teacher-cache",
        help="reuse trained teachers from this folder when seed, data and teacher settings "
        "match (default: build/teacher-cache)",
    )
    p.add_argument(
        "--no-teacher-cache", action="store_true", help="always train the teacher afresh"
    )


def add_deployment_options(p: argparse.ArgumentParser, default_image: str, layout: str) -> None:
    """What the Kubernetes and KServe manifests name: the service, the image the written
    Dockerfile builds (``default_image`` when not given) and where KServe reads ``layout``."""
    p.add_argument("--name", default="distillserve", help="name of the service and manifests")
    p.add_argument(
        "--image",
        help="the image the manifests run, as your registry names it (build it from the "
        f"written Dockerfile; default: {default_image})",
    )
    p.add_argument(
        "--storage-uri",
        help=f"where KServe reads {layout} (default: pvc://NAME-models, the claim in "
        "manifests/storage.yaml)",
    )
