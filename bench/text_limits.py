"""What limits the text section's served figures, measured in the same run: TorchServe's no-op
floor (``floor_handler``, served like the models with the same texts and clients) and each
model's handler ceiling in process (``models.handler_ceiling``: tokenizing, forward and top-k at
batch 8 over the test texts in turn, times the archive's workers).

A served model can reach at most min(floor, ceiling) requests/s on this machine; so the most
the int8 student can serve over the teacher here is the ratio of their limits. Judged as the
engines section judges (served ÷ limit ≥ 0.9), and against that ratio, a target stated as a
ratio ("the int8 student at 4x the teacher") is read against what the machine allows, not a
fixed number; both the kernels' ratio (``kernel_ratios``) and this one are reported.
"""

from __future__ import annotations

from pathlib import Path

from distillserve.bench.models import handler_ceiling

__all__ = ["FLOOR", "kernel_ratios", "limit_lines", "limits", "measure_ceilings"]

FLOOR = "floor"  # the served name of TorchServe's no-op floor in the text section
BATCH = 8


def measure_ceilings(archives: dict[str, Path], payloads: list[bytes], work: Path) -> dict:
    """Requests/s of each of our archives' handler core in process at batch 8."""
    return {
        name: handler_ceiling(archive, payloads, [BATCH], work / f"ceiling-{name}")[str(BATCH)][
            "images_per_s"
        ]
        for name, archive in archives.items()
    }


def limits(results: dict, clients: int = 16) -> dict[str, dict[str, float]]:
    """Per served model at ``clients``: its limit min(floor, ceiling), served ÷ limit, and, for
    the int8 students, the ratio of their limit to the teacher's beside the served ratio."""
    key = str(clients)
    ceilings, served = results.get("ceilings_rps", {}), results["served"]
    if FLOOR not in served or "teacher" not in ceilings:
        return {}
    floor = served[FLOOR][key]["throughput_rps"]

    def limit(name: str) -> float:
        return min(floor, ceilings[name])

    out = {}
    for name, ceiling in ceilings.items():
        rps = served[name][key]["throughput_rps"]
        row = {
            "limit_rps": round(limit(name), 1),
            "ceiling_rps": round(ceiling, 1),
            "served_of_limit": round(rps / limit(name), 3),
        }
        if name.startswith("int8"):
            allowed = limit(name) / limit("teacher")
            achieved = rps / served["teacher"][key]["throughput_rps"]
            row |= {
                "limit_ratio": round(allowed, 2),
                "served_ratio": round(achieved, 2),
                "of_limit_ratio": round(achieved / allowed, 3),
            }
        out[name] = row
    return out


def limit_lines(results: dict) -> list[str]:
    """The summary's lines on the limits (none when the run did not measure them)."""
    rows = limits(results)
    if not rows:
        return []
    floor = results["served"][FLOOR]["16"]["throughput_rps"]
    lines = [
        f"Limits in this run at 16 clients: TorchServe's no-op floor {floor:.0f} req/s; served "
        "÷ min(floor, the model's handler ceiling in process), target >= 0.9: "
        + ", ".join(
            f"{name} {row['served_of_limit']:.2f} (ceiling {row['ceiling_rps']:.0f})"
            for name, row in rows.items()
        )
        + "."
    ]
    ratios = {n: r for n, r in rows.items() if "limit_ratio" in r}
    if ratios:
        lines.append(
            "The most the int8 student can serve over the teacher on this machine (the ratio "
            "of their limits) against what it served: "
            + ", ".join(
                f"{name} {r['served_ratio']:.2f}x of {r['limit_ratio']:.2f}x "
                f"({r['of_limit_ratio']:.0%})"
                for name, r in ratios.items()
            )
            + "."
        )
    return lines


def kernel_ratios(results: dict) -> dict[str, dict[str, float]]:
    """Per int8 format: the teacher's batch-8 latency over the student's (what the kernels
    allow), the served requests/s ratio at 16 clients, and the served share of the former."""
    teacher = results["models"].get("teacher", {}).get("formats", {}).get("torchscript", {})
    student = results["models"].get("student", {}).get("formats", {})
    out = {}
    for fmt, own in student.items():
        served = results["ratios_c16"].get(f"int8-{fmt}", {}).get("vs_teacher")
        if (
            served is None
            or not teacher.get("latency_ms_batch8")
            or not own.get("latency_ms_batch8")
        ):
            continue
        kernels = teacher["latency_ms_batch8"] / own["latency_ms_batch8"]
        out[fmt] = {
            "kernels": round(kernels, 2),
            "served": served,
            "fraction": round(served / kernels, 3),
        }
    return out
