"""``distillserve``: one command, one verb per job; each verb a thin front end over the library
(``verbs_build``, ``verbs_serve``, ``verbs_versions``).

Every verb has ``--help``; bad input is a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

# Before torch is imported anywhere: these would drown the output of every command.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")

from distillserve.errors import DistillServeError  # noqa: E402
from distillserve.scripts import (  # noqa: E402
    verbs_build,
    verbs_serve,
    verbs_sign,
    verbs_triton,
    verbs_versions,
)

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillserve",
        description="Distill image and text models into small int8 students and serve them with "
        "TorchServe (or Triton).",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (verbs_build, verbs_serve, verbs_triton, verbs_versions, verbs_sign):
        group.add_verbs(verbs)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (``main`` may run more than once in a
    process, each time with its own stderr)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _show_progress(verb: str) -> None:
    """The toolkit's progress lines (``distillserve.log``) on stderr; a search or a benchmark
    trains many models and keeps their per-epoch lines to itself."""
    logger = logging.getLogger("distillserve")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # torch-model-archiver configures the root logger: no second copy
    train = logging.WARNING if verb in ("tune", "bench") else logging.NOTSET
    logging.getLogger("distillserve.train").setLevel(train)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    _show_progress(args.verb)
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
