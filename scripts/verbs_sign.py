"""Verbs for archive signatures: keys (make a signing key pair) and verify (check archives)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distillserve.scripts.options import add_trust_options, trust_of

__all__ = ["add_verbs"]


def _keys(args: argparse.Namespace) -> int:
    from distillserve.archiver.signing import init_keys

    private, public = init_keys(args.dir, force=args.force)
    print(f"private key: {private} (signs archives; keep it on the build host, mode 0600)")
    print(f"public key:  {public} (servers verify with it)")
    print(
        f"serving config: distillserve_public_key={public} "
        "(config.properties names keys/archive-signing.pub.pem already)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from distillserve.archiver.mar import inspect_archive
    from distillserve.archiver.signing import verify_mar

    trust = trust_of(args)
    for mar in (Path(m) for m in args.mars):
        how = verify_mar(mar, trust)  # ArchiveError (one line) for the first bad one
        info = inspect_archive(mar)  # then the model file, labels and batch size
        print(f"{mar}: {info['model_name']} {info['version']}: {how}")
    return 0


def add_verbs(verbs) -> None:
    p = verbs.add_parser("keys", help="make the key pair that signs archives")
    p.add_argument("action", choices=("init",))
    p.add_argument("--dir", default="keys", help="where the pair goes (default: keys)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing pair (archives signed with it stop verifying)",
    )
    p.set_defaults(func=_keys)

    p = verbs.add_parser(
        "verify", help="check that every file of .mar archives matches its signature"
    )
    p.add_argument("mars", nargs="+", help=".mar files")
    p.add_argument(
        "--config",
        default="config.properties",
        help="serving config whose distillserve_public_key to use (default: %(default)s)",
    )
    add_trust_options(p)
    p.set_defaults(func=_verify)
