"""Run an archive's model file before the archive is written, in one fresh Python process: count
its outputs (the labels check, ``archiver.labels``) and, when the archive's workers or threads are
``auto``, time it (``archiver.serving_measure``). A fresh process keeps the caller's thread pools
unstarted (a caller that forks later cannot deadlock in them) and its quantized engine as it was;
one process for both checks saves a second start of Python and torch (about 2 s an archive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from distillserve.errors import ArchiveError
from distillserve.handlers.classification import HandlerSettings
from distillserve.handlers.serving_policy import Measured

__all__ = ["Probe", "probe"]


@dataclass(frozen=True)
class Probe:
    """Logits per input of the model file, and its timings (``None`` unless asked for)."""

    outputs: int
    measured: Measured | None


def probe(model_path: Path, handler: HandlerSettings, measure_batch: int | None) -> Probe:
    """Run ``model_path`` (its tokenizer, for text, beside it) in a fresh process; with
    ``measure_batch``, also time it at that batch size (``serving_measure.measure_here``)."""
    command = [
        sys.executable,
        "-m",
        __name__,
        str(model_path),
        json.dumps(handler.to_dict()),
        str(measure_batch or 0),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise ArchiveError(
            f"cannot run {model_path.name} to check it before archiving: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1]
        )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    measured = answer["measured"]
    return Probe(int(answer["outputs"]), Measured(**measured) if measured else None)


def _probe_here(model_path: Path, handler: HandlerSettings, measure_batch: int) -> dict:
    from distillserve.archiver.labels import outputs_here
    from distillserve.archiver.serving_measure import measure_here

    outputs = outputs_here(model_path, handler)
    measured = measure_here(model_path, handler, measure_batch) if measure_batch else None
    return {"outputs": outputs, "measured": asdict(measured) if measured else None}


if __name__ == "__main__":  # probe's process: MODEL_PATH HANDLER_JSON MEASURE_BATCH (0: no timing)
    settings = HandlerSettings.from_dict(json.loads(sys.argv[2]))
    print(json.dumps(_probe_here(Path(sys.argv[1]), settings, int(sys.argv[3]))))
