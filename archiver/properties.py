"""TorchServe's ``config.properties``: the one place it is generated, and read back.

``ServerConfig`` renders the settings of one server: the two profiles shipped at the repository
root (``config.properties`` for serving, ``config.mlops.properties`` for registration), the
servers the tests and the bench start on free ports, and the config of a KServe deployment.
The shipped files are generated; rewrite them with

    python -m distillserve.archiver.properties [DIR]

and a test checks that the checked-in copies are current.
"""

from __future__ import annotations

import random
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from distillserve.errors import ServerError

__all__ = [
    "LOCAL_STORE_ONLY",
    "MAX_REQUEST_SIZE",
    "PATH_KEYS",
    "PROFILES",
    "ServerConfig",
    "free_port",
    "read_properties",
    "render_profile",
    "write_properties",
]

# A pattern that matches no URL: only archives already in the model store can be registered.
LOCAL_STORE_ONLY = "^$"
# Admits the handler's largest image (ImageLimits.max_bytes) sent as base64 JSON (4/3 larger),
# with headroom for the JSON around it; anything larger the frontend refuses with 413.
MAX_REQUEST_SIZE = 12 * 1024 * 1024

# config.properties keys that hold file paths (relative ones are relative to the config file).
PATH_KEYS = (
    "model_store",
    "workflow_store",
    "metrics_config",
    "certificate_file",
    "private_key_file",
    "model_snapshot_dir",
    "distillserve_public_key",
)

# What each setting is for, written above it in the shipped profiles.
_COMMENTS = {
    "inference_address": "Every endpoint listens on loopback only.",
    "model_store": (
        "Archives load from the local model store only; load_models names the demo's at start\n"
        "(serve your own with `distillserve serve start --models A.mar,B.mar`)."
    ),
    "disable_token_authorization": (
        "Security: clients send `Authorization: Bearer <key>` with a key from key_file.json."
    ),
    "allowed_urls": (
        "Matches no URL: nothing is fetched from http(s) or file:// URLs (TorchServe's default\n"
        "allows any, the SSRF of CVE-2023-43654); only archives already in model_store load.\n"
        "No workflows are used."
    ),
    "max_request_size": (
        "Requests larger than this are refused by the frontend (413). The handler refuses images\n"
        "over 8 MiB or 25 megapixels itself; 12 MiB admits an 8 MiB image sent as base64 JSON."
    ),
    "model_metrics_auto_detect": (
        "Workers: each archive's model-config.yaml names its workers, batch size and delay; an\n"
        "archive whose workers are 'auto' (one per core) leaves the count to the server:\n"
        "`distillserve serve start` sets default_workers_per_model to this host's usable cores\n"
        "(TorchServe alone starts one per CPU at start-up, and none for a registration that\n"
        "names no initial_workers). Metrics: the handler's own metrics are recorded."
    ),
    "metrics_config": "Declares the handler's metrics; relative paths are relative to this file.",
    "distillserve_public_key": (
        "distillserve's own keys (TorchServe ignores them). Every archive is verified against\n"
        "this public key before the server sees it, and again by the handler when it loads;\n"
        "unsigned archives are refused (distillserve_allow_unsigned=true would accept them).\n"
        "`distillserve keys init` makes the pair; relative to this file."
    ),
}


# Ports handed out by this process: a server is told its ports before it binds them, so the
# bind test alone would give one port twice to the five listeners of one TorchServe.
_GIVEN: set[int] = set()
_CHOOSER = random.SystemRandom()  # not the global generator, which training seeds alike


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, taken from outside the kernel's ephemeral range
    and never twice by one process.

    ``bind(0)`` would answer from the ephemeral range, which is also where every outgoing
    connection takes its local port: on a machine busy with loopback clients (a load test,
    another server's start-up polls) one of them could take the port in the moment before the
    server binds it, and the server would fail with "Address already in use" (seen with
    TorchServe's gRPC listener, which binds last).
    """
    low, high = _ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((10_000, low - 1), (high + 1, 65_535)) if hi - lo >= 1_000]
    for _ in range(200 if spans else 0):
        lo, hi = _CHOOSER.choice(spans)
        port = _CHOOSER.randint(lo, hi)
        if port not in _GIVEN and _bindable(port):
            _GIVEN.add(port)
            return port
    while True:  # no room outside the ephemeral range (or none free): the kernel's choice
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49_152, 65_535


def _bindable(port: int) -> bool:
    """Whether a listener could bind ``port`` on 127.0.0.1 now (no SO_REUSEADDR: a port with
    connections still in TIME_WAIT counts as taken, as it does for some servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ServerConfig:
    """The settings of one TorchServe, rendered as ``config.properties``."""

    model_store: str | Path
    host: str = "127.0.0.1"  # the inference and metrics listeners
    inference_port: int = 8080
    management_port: int = 8081  # management always listens on loopback
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    token_auth: bool = True
    enable_model_api: bool = False
    metrics_mode: str = "log"  # or prometheus
    metrics_config: str | None = None
    public_key: str | None = None  # distillserve_public_key: archives must be signed by it
    load_models: tuple[str, ...] | str = ()  # archive files, or "all"
    # workers of an archive whose model-config.yaml names none ('auto': one per core); None
    # leaves it to whoever starts the server (``serve start``: the host's usable cores)
    default_workers: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def with_free_ports(cls, model_store: str | Path, **kwargs) -> ServerConfig:
        """On loopback ports that are free right now (tests and the bench)."""
        names = (
            "inference_port",
            "management_port",
            "metrics_port",
            "grpc_inference_port",
            "grpc_management_port",
        )
        return cls(model_store=model_store, **{n: free_port() for n in names}, **kwargs)

    def properties(self) -> dict[str, str]:
        """``key -> value`` in the order they are written."""
        props = {
            "inference_address": f"http://{self.host}:{self.inference_port}",
            "management_address": f"http://127.0.0.1:{self.management_port}",
            "metrics_address": f"http://{self.host}:{self.metrics_port}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.grpc_inference_port),
            "grpc_management_port": str(self.grpc_management_port),
            "model_store": str(self.model_store),
        }
        if self.load_models:
            names = self.load_models
            props["load_models"] = names if isinstance(names, str) else ",".join(names)
        props.update(
            {
                "disable_token_authorization": str(not self.token_auth).lower(),
                "enable_model_api": str(self.enable_model_api).lower(),
                "allowed_urls": LOCAL_STORE_ONLY,
                "install_py_dep_per_model": "false",
                "max_request_size": str(MAX_REQUEST_SIZE),
                "model_metrics_auto_detect": "true",
            }
        )
        if self.default_workers is not None:
            props["default_workers_per_model"] = str(self.default_workers)
        if self.metrics_mode != "log":
            props["metrics_mode"] = self.metrics_mode
        if self.metrics_config:
            props["metrics_config"] = self.metrics_config
        if self.public_key:
            props["distillserve_public_key"] = str(self.public_key)
        props.update({k: str(v) for k, v in self.extra.items()})
        return props

    def render(self, header: str = "", explain: bool = False) -> str:
        """The file's text: ``header`` lines as comments, then each setting, with what it is
        for above it when ``explain`` (the shipped profiles explain themselves)."""
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        for key, value in self.properties().items():
            if explain and key in _COMMENTS:
                lines += ["", *(f"# {line}" for line in _COMMENTS[key].splitlines())]
            lines.append(f"{key}={value}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path, header: str = "") -> Path:
        path = Path(path)
        path.write_text(self.render(header))
        return path


_DEMO_MODELS = (
    "digits-teacher.mar",
    "digits-student.mar",
    "digits-student-fp32.mar",
    "digits-student-pt2.mar",
    "digits-student-onnx.mar",
)
_DEMO_PUBLIC_KEY = "keys/archive-signing.pub.pem"  # what `distillserve keys init` writes
_GENERATED = (
    "Generated by `python -m distillserve.archiver.properties` from\n"
    "archiver/properties.py: change that module, then regenerate this file."
)
PROFILES: dict[str, tuple[str, ServerConfig]] = {
    "config.properties": (
        "The SERVING profile, used by `distillserve serve start` and `make demo`: every endpoint\n"
        "on loopback, token authorization on, no model registration API, models only from the\n"
        "local model store. config.mlops.properties is the profile for teams that register\n"
        'models over the management API. See the README, "Configuration".',
        ServerConfig(
            model_store="model_store", load_models=_DEMO_MODELS, public_key=_DEMO_PUBLIC_KEY
        ),
    ),
    "config.mlops.properties": (
        "The MLOPS profile: like config.properties (loopback only, token authorization on,\n"
        "archives only from the local model store) but with the management API's\n"
        "register/unregister calls enabled and metrics served in Prometheus format. Start it:\n"
        "  distillserve serve start --config config.mlops.properties\n"
        "Register with the management key from key_file.json:\n"
        '  curl -X POST -H "Authorization: Bearer $MGMT" \\\n'
        '       "http://127.0.0.1:8081/models?url=digits-student.mar&batch_size=8"',
        ServerConfig(
            model_store="model_store",
            load_models=_DEMO_MODELS,
            enable_model_api=True,
            metrics_mode="prometheus",
            metrics_config="metrics.yaml",
            public_key=_DEMO_PUBLIC_KEY,
        ),
    ),
}


def render_profile(name: str) -> str:
    """The text of a shipped profile, as it must be checked in."""
    description, config = PROFILES[name]
    return config.render(f"{description}\n\n{_GENERATED}", explain=True)


def write_properties(props: dict[str, str], path: str | Path) -> Path:
    """Write ``key=value`` lines (values on one line) that TorchServe reads back."""
    path = Path(path)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def read_properties(path: str | Path) -> dict[str, str]:
    """A Java-style ``key=value`` properties file as a dict (comments and blanks skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ServerError(f"config file not found: {path} (pass --config PATH)")
    props, pending = {}, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\"):  # a continued line, as java.util.Properties reads it
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def main(argv: list[str] | None = None) -> int:
    """Write the shipped profiles into a directory (the current one by default)."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path.cwd()
    for name in PROFILES:
        (root / name).write_text(render_profile(name))
        print(root / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
