"""The Python environment the Triton engine runs its models in (``python -m
distillserve.serving.triton_env`` prepares it; ``make`` does so on install).

Triton's Python backend runs each model in a stub process that embeds Python. The stub that
nvidia-pytriton 0.7.0 bundles (Triton 2.51) is built against NumPy 1: under NumPy 2 every
tensor it hands over or takes back is read with the wrong strides (a BYTES input arrives as
its first byte repeated, a BYTES output as nothing). So the stub runs in a small virtual
environment of its own, beside this one:

  numpy==1.26.4 and nvidia-pytriton==0.7.0   installed without dependencies (pytriton's own
                                            ``numpy<2`` pin would downgrade this environment);
  a ``.pth`` line                            this environment's site-packages after its own, so
                                            torch, onnxruntime, Pillow, PyYAML, model-signing
                                            and the tokenizers come from here (all of them
                                            import under NumPy 1.26).

The stub also links ``libpython3.11``: the engine puts this interpreter's own ``LIBDIR`` first
on ``LD_LIBRARY_PATH``, so a pyenv Python's stub does not pick up the system's 3.11 library.

``ensure_torch_free_env`` makes a second environment beside it (``triton-env-no-torch``), for
``serve start --engine triton --without-torch``: the same packages, but torch and torchvision
cannot be imported in it, as on an inference host that never installed them, so an ONNX
student is proven (and measured) torch-free on a machine that has torch. Its first ``.pth``
marks them absent: the stub embeds an isolated interpreter, which ignores ``PYTHONPATH`` (so
no ``sitecustomize`` of ours) but reads the ``.pth`` files of its site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from filelock import FileLock

from distillserve.errors import ServerError

__all__ = [
    "TRITON_ENV_VAR",
    "TritonDist",
    "ensure_env",
    "ensure_torch_free_env",
    "env_path",
    "find_dist",
]

TRITON_ENV_VAR = "DISTILLSERVE_TRITON_ENV"
PACKAGES = ("numpy==1.26.4", "nvidia-pytriton==0.7.0")
_PTH = "zz-distillserve-site.pth"


def env_path() -> Path:
    """Where the environment lives: ``$DISTILLSERVE_TRITON_ENV``, else ``triton-env`` inside
    this virtual environment."""
    explicit = os.environ.get(TRITON_ENV_VAR)
    return Path(explicit) if explicit else Path(sys.prefix) / "triton-env"


def _site_packages(prefix: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix / "lib" / version / "site-packages"


def ensure_env(path: Path | None = None, log=print) -> Path:
    """The environment at ``path`` (default ``env_path()``), made if it is missing or
    incomplete. ``ServerError`` (one line) when it cannot be made."""
    path = path or env_path()
    dist = path / ".complete"
    if dist.exists():
        return path
    log(f"preparing the Triton engine's Python environment in {path} (numpy 1, pytriton)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
        subprocess.run(
            [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "--no-deps", *PACKAGES],
            check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        raise ServerError(
            f"could not prepare the Triton environment in {path} ({err}); "
            f"pip must reach {', '.join(PACKAGES)}"
        ) from None
    ours = _site_packages(Path(sys.prefix))
    (_site_packages(path) / _PTH).write_text(f"{ours}\n")
    dist.write_text(" ".join(PACKAGES) + "\n")
    return path


def ensure_torch_free_env(path: Path | None = None) -> Path:
    """The environment at ``path`` (default: ``triton-env-no-torch`` beside ``env_path()``)
    in which torch and torchvision cannot be imported; made from the prepared environment if
    missing (links to its NumPy 1 and pytriton, this environment's packages after them)."""
    prepared = ensure_env()
    path = path or prepared.with_name(f"{prepared.name}-no-torch")
    with FileLock(f"{path}.lock"):  # two servers started at once make it once
        if not (path / ".complete").exists():
            _make_torch_free(path, prepared)
    return path


def _make_torch_free(path: Path, prepared: Path) -> None:
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(path)],
                       check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        raise ServerError(
            f"could not make the torch-free Triton environment {path}: {err}"
        ) from None
    site, source = _site_packages(path), _site_packages(prepared)
    for name in ("numpy", "numpy.libs", "pytriton", "nvidia_pytriton.libs"):
        (site / name).symlink_to(source / name)
    (site / "00-distillserve-no-torch.pth").write_text(
        "import sys; sys.modules.update(torch=None, torchvision=None)\n"
    )
    (site / _PTH).write_text(f"{_site_packages(Path(sys.prefix))}\n")
    (path / ".complete").write_text("torch and torchvision blocked\n")


class TritonDist:
    """The bundled tritonserver of the environment at ``env``: binary, libraries, stub."""

    def __init__(self, env: Path) -> None:
        self.env = env
        site = _site_packages(env)
        self.root = site / "pytriton" / "tritonserver"
        self.libs = site / "nvidia_pytriton.libs"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.binary = self.root / "bin" / "tritonserver"
        self.python_backend = self.root / "backends" / "python"
        self.stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    def missing(self) -> list[Path]:
        return [p for p in (self.binary, self.python_backend, self.stub) if not p.exists()]

    def backends(self, folder: Path) -> Path:
        """A backend directory in ``folder`` whose Python backend has this Python's stub
        (links, not copies: Triton looks for the stub beside the backend library)."""
        python = folder / "python"
        python.mkdir(parents=True, exist_ok=True)
        links = {p.name: p for p in self.python_backend.iterdir() if p.is_file()}
        links["triton_python_backend_stub"] = self.stub
        for name, target in links.items():
            link = python / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        return folder

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server's environment: this environment's ``bin`` first on ``PATH`` (the stub
        finds its Python there), this interpreter's ``libpython`` and the bundled libraries on
        ``LD_LIBRARY_PATH``."""
        env = dict(os.environ if base is None else base)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{self.env / 'bin'}:{env.get('PATH', '')}"
        return env


def find_dist(prepare: bool = True, without_torch: bool = False) -> TritonDist:
    """The bundled Triton, its environment prepared when ``prepare`` (``ServerError`` with
    what is missing otherwise); with ``without_torch``, the environment that cannot import
    torch."""
    if without_torch:
        return TritonDist(ensure_torch_free_env())
    path = ensure_env() if prepare else env_path()
    dist = TritonDist(path)
    missing = dist.missing()
    if missing:
        raise ServerError(
            f"the Triton engine needs nvidia-pytriton in {path}: missing {missing[0]} "
            f"(run: python -m distillserve.serving.triton_env)"
        )
    return dist


if __name__ == "__main__":
    print(ensure_env())
