"""What ``TorchServe.start`` checks before and after launching the server: which archives to
serve (``serve start --models``), that every port the config names is free, and, when the
server dies during start-up, the cause from its logs.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from distillserve.archiver import inspect_archive
from distillserve.errors import ServerError

__all__ = ["check_ports", "resolve_archives", "startup_cause"]

# config.properties keys of the addresses TorchServe binds: (key, host key, port key).
_LISTENERS = (
    ("inference_address", None, None),
    ("management_address", None, None),
    ("metrics_address", None, None),
    ("grpc_inference_port", "grpc_inference_address", "grpc_inference_port"),
    ("grpc_management_port", "grpc_management_address", "grpc_management_port"),
)
_DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
    "grpc_inference_port": "7070",
    "grpc_management_port": "7071",
}
# Lines of TorchServe's logs that say why it stopped, most telling first.
_CAUSES = ("Address already in use", "BindException", "Exception", "ERROR", "Error")


def resolve_archives(items: list[str], model_store: Path) -> tuple[Path, list[str]]:
    """``--models`` as (model store, archive file names): ``.mar`` files or a directory of
    them, all in one directory (TorchServe loads from one store); a bare name may be an archive
    in ``model_store``. Each archive is verified first (``archiver.inspect_archive``)."""
    paths: list[Path] = []
    for item in (part.strip() for entry in items for part in entry.split(",")):
        if not item:
            continue
        path = Path(item)
        if not path.exists() and (model_store / item).exists():
            path = model_store / item
        if path.is_dir():
            found = sorted(path.glob("*.mar"))
            if not found:
                raise ServerError(f"--models: no .mar archives in {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise ServerError(f"--models: archive not found: {item}")
    if not paths:
        raise ServerError("--models: no archives given")
    folders = {p.resolve().parent for p in paths}
    if len(folders) > 1:
        raise ServerError(
            f"--models: the archives are in {len(folders)} folders "
            f"({', '.join(sorted(map(str, folders)))}); TorchServe loads from one model store: "
            "put them in one folder (or distillserve register them into the model store)"
        )
    for path in paths:
        if path.suffix != ".mar":
            raise ServerError(f"--models: {path} is not a .mar archive")
        inspect_archive(path)  # an altered archive is refused before the server sees it
    return folders.pop(), list(dict.fromkeys(p.name for p in paths))


def _listeners(props: dict[str, str]) -> list[tuple[str, str, int]]:
    """(config key, host, port) of every address the server will bind."""
    out = []
    for key, host_key, port_key in _LISTENERS:
        if host_key is None:
            url = urlsplit(props.get(key, _DEFAULTS[key]))
            if url.port is None:
                continue
            out.append((key, url.hostname or "127.0.0.1", url.port))
        else:
            host = props.get(host_key, "127.0.0.1")
            out.append((port_key, host, int(props.get(port_key, _DEFAULTS[port_key]))))
    return out


def _holder(port: int) -> str:
    """Which process listens on ``port`` (best effort: needs the right to see it)."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid
            if listening and conn.laddr.port == port:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_ports(props: dict[str, str], config_name: str, run_dir: Path) -> None:
    """``ServerError`` naming the first address that is already taken, who holds it and how to
    choose another, before TorchServe is launched (it would die with the cause in its log)."""
    for key, host, port in _listeners(props):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise ServerError(f"cannot listen on {host}:{port} ({key}): {err}") from None
                raise ServerError(
                    f"{host}:{port} ({key} in {config_name}) is already in use{_holder(port)}: "
                    f"stop what listens there (a distillserve server: distillserve serve stop "
                    f"--run-dir DIR), or serve on other ports: copy {config_name}, change {key} "
                    f"and start with --config COPY --run-dir ANOTHER_DIR (not {run_dir})"
                ) from None


def startup_cause(log_dir: Path) -> str:
    """The line of the server's logs that best says why it stopped during start-up."""
    lines: list[str] = []
    for name in ("ts_log.log", "launcher.log", "model_log.log"):
        try:
            lines += (log_dir / name).read_text(errors="replace").splitlines()[-400:]
        except OSError:
            continue
    for marker in _CAUSES:
        found = [line.strip() for line in lines if marker in line]
        if found:
            return found[-1][-300:]
    return ""
