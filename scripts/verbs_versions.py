"""Verbs that manage model versions on a server and in the model store: register, set-default,
scale, unregister, rollback, list, describe, models. On the Triton engine (``--engine triton``)
``list`` and ``describe`` read Triton's repository and model endpoints; the others refuse in
one line (``verbs_triton.versions_on_triton``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillserve.scripts.options import (
    add_server_options,
    add_trust_options,
    connection,
    trust_of,
)
from distillserve.scripts.verbs_triton import add_engine_option, versions_on_triton

__all__ = ["add_verbs"]


def _register(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "register")
    from distillserve.serving.versions import register_archive

    server = connection(args)
    result = register_archive(
        server.management_client(),
        server.model_store,
        Path(args.mar),
        model_name=args.model_name,
        batch_size=args.batch_size,
        max_batch_delay=args.max_batch_delay,
        initial_workers=args.initial_workers,
        make_default=args.set_default,
        trust=trust_of(args),
    )
    print(f"registered {result['model_name']} {result['version']} from {result['file']}")
    if result["workers_note"]:
        print(f"note: {result['workers_note']}", file=sys.stderr)
    return 0


def _set_default(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "set-default")
    from distillserve.serving.versions import set_default

    server = connection(args)
    set_default(server.management_client(), server.model_store, args.model, args.version)
    print(f"{args.model}: default version is now {args.version}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "scale")
    from distillserve.serving.versions import require_version

    client = connection(args).management_client()
    require_version(client, args.model, args.version)
    client.scale(args.model, args.version, min_worker=args.min, max_worker=args.max)
    print(f"{args.model}: workers scaled to min {args.min}, max {args.max or args.min}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "unregister")
    from distillserve.serving.versions import unregister

    server = connection(args)
    unregister(server.management_client(), server.model_store, args.model, args.version)
    print(f"unregistered {args.model} {args.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "rollback")
    from distillserve.serving.versions import rollback

    server = connection(args)
    retired, restored = rollback(server.management_client(), server.model_store, args.model)
    print(f"{args.model}: default is {restored} again; {retired} unregistered")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "list")
    from distillserve.serving.versions import server_state, versions_table

    print(versions_table(server_state(connection(args).management_client())))
    return 0


def _describe(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "describe")
    from distillserve.serving.versions import require_version

    client = connection(args).management_client()
    require_version(client, args.model, None if args.version == "all" else args.version)
    print(json.dumps(client.describe(args.model, args.version), indent=2))
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.engine == "triton":
        return versions_on_triton(args, "models")
    from distillserve.archiver import Registry
    from distillserve.errors import ServerError
    from distillserve.serving.versions import server_state, store_table

    server = connection(args, config_optional=True)
    try:
        state = server_state(server.management_client()) if server.props else None
        note = None
    except ServerError as err:
        state, note = None, f"server state unknown (? below): {err}"
    print(store_table(Registry(server.model_store), state))
    if note:
        print(note)
    return 0


def add_verbs(verbs) -> None:
    p = verbs.add_parser("register", help="verify a .mar and register it as a model version")
    p.add_argument("mar", help="path of the .mar (copied into the model store if elsewhere)")
    p.add_argument("--model-name", help="register under this name (default: the archive's)")
    p.add_argument("--batch-size", type=int, help="server-side batch size")
    p.add_argument("--max-batch-delay", type=int, help="ms to wait for a batch to fill")
    p.add_argument(
        "--initial-workers",
        type=int,
        help="workers for an archive whose model-config.yaml names none (an 'auto' one; "
        "default: the server's default_workers_per_model, which serve start sets to its cores)",
    )
    p.add_argument("--set-default", action="store_true", help="make it the default version")
    add_trust_options(p)
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_register)

    p = verbs.add_parser("set-default", help="make a registered version the default")
    p.add_argument("model")
    p.add_argument("version")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_set_default)

    p = verbs.add_parser("scale", help="set the min/max workers of a model (version)")
    p.add_argument("model")
    p.add_argument("--version", help="default: the default version")
    p.add_argument("--min", type=int, required=True, help="minimum workers")
    p.add_argument("--max", type=int, help="maximum workers (default: --min)")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_scale)

    p = verbs.add_parser("unregister", help="remove a model version from the server")
    p.add_argument("model")
    p.add_argument("version")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_unregister)

    p = verbs.add_parser("rollback", help="make the previous version default, retire the current")
    p.add_argument("model")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_rollback)

    p = verbs.add_parser("list", help="models and versions on the server, default marked *")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_list)

    p = verbs.add_parser("describe", help="TorchServe's description of a model (JSON)")
    p.add_argument("model")
    p.add_argument("--version", default="all", help="a version, or all (default)")
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_describe)

    p = verbs.add_parser(
        "models", help="the model store's archives and what the server says of each"
    )
    add_server_options(p)
    add_engine_option(p)
    p.set_defaults(func=_models)
