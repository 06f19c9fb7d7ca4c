"""``distillserve``: one command, one verb per job; each verb a thin front end over the library
(``verbs_build``, ``verbs_serve``, ``verbs_versions``).

Every verb has ``--help``; bad input is a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

# Before torch is imported anywhere: these would drown the output of every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")

from distillserve.errors import DistillServeError  # noqa: E402
from distillserve.scripts import verbs_build, verbs_serve, verbs_versions  # noqa: E402

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillserve",
        description="Distill image models into small int8 students and serve them with TorchServe.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (verbs_build, verbs_serve, verbs_versions):
        group.add_verbs(verbs)
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
