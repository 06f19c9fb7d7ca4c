"""The toolkit's progress lines, ``[role] message``, through one logger tree: ``distillserve``.

Library code logs at INFO and never prints; the command line (``scripts.cli``) shows
``distillserve`` on stderr. A caller of the library chooses for itself (``logging``'s default
shows none of it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["progress"]


def progress(role: str) -> Callable[[str], None]:
    """A ``log(message)`` function for ``role`` (``build``, ``demo``, ``tune``, ...)."""
    logger = logging.getLogger(f"distillserve.{role}")

    def log(message: str) -> None:
        logger.info("[%s] %s", role, message)

    return log
