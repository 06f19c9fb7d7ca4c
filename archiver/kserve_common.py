"""What the KServe and the plain Kubernetes deployments share: where the layout is mounted, how
each engine (TorchServe from ``export-kserve``, Triton from ``export-triton --deploy``) is
started from it, its ports and health path, and what a pod asks for."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INFERENCE_PORT",
    "METRICS_PORT",
    "MOUNT",
    "POD_CORES",
    "PUBLIC_KEY_FILE",
    "RESOURCES",
    "TORCHSERVE",
    "TORCHSERVE_ARGS",
    "TRITON",
    "TRITON_BACKENDS",
    "EngineContainer",
    "container_env",
    "kserve_manifests",
    "shared_memory_volume",
]

MOUNT = "/mnt/models"
INFERENCE_PORT = 8085
METRICS_PORT = 8082
# The one way both manifests start TorchServe from the mounted layout, and what they ask for.
TORCHSERVE_ARGS = [
    "torchserve",
    "--start",
    "--foreground",
    "--disable-token-auth",
    f"--model-store={MOUNT}/model-store",
    f"--ts-config={MOUNT}/config/config.properties",
]
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
# the cores a pod may keep busy: a Triton repository for the pods runs one model instance per
# core for archives whose workers are 'auto' (export-triton --deploy)
POD_CORES = int(RESOURCES["limits"]["cpu"])
# The archives' signing public key, beside config.properties in the layout; the handler reads
# its location from the container's environment.
PUBLIC_KEY_FILE = "archive-signing.pub.pem"
# Where the Triton image keeps its Python backend with the Python 3.11 stub (image.py).
TRITON_BACKENDS = "/opt/distillserve/backends"


@dataclass(frozen=True)
class EngineContainer:
    """One engine as a pod runs it: the container's name and command line, its ports (the
    first is the HTTP inference port), the path its probes ask, how KServe names what it
    serves, and whether it needs a memory-backed ``/dev/shm`` (Triton's Python backend moves
    every tensor through shared memory; a pod's default is 64 MB)."""

    name: str
    args: list[str]
    ports: dict[str, int]
    health_path: str
    model_format: dict[str, str]
    protocols: list[str]
    shared_memory: bool = False
    key_dir: str = f"{MOUNT}/config"  # where the layout keeps the signing public key

    @property
    def http_port(self) -> int:
        return next(iter(self.ports.values()))


TORCHSERVE = EngineContainer(
    name="torchserve",
    args=TORCHSERVE_ARGS,
    ports={"http": INFERENCE_PORT, "metrics": METRICS_PORT},
    health_path="/ping",
    model_format={"name": "pytorch", "version": "1"},
    protocols=["v1", "v2"],
)
# KServe's own Triton runtime listens on 8080 (HTTP) and 9000 (gRPC); so does this one. The
# repository is the mounted layout itself, the signing key a file at its top (Triton reads
# only its folders as models).
TRITON = EngineContainer(
    name="triton",
    args=[
        "tritonserver",
        f"--model-repository={MOUNT}",
        f"--backend-directory={TRITON_BACKENDS}",
        "--http-port=8080",
        "--grpc-port=9000",
        "--metrics-port=8002",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=10",
    ],
    ports={"http": 8080, "grpc": 9000, "metrics": 8002},
    health_path="/v2/health/ready",
    model_format={"name": "triton", "version": "2"},
    protocols=["v2", "grpc-v2"],
    shared_memory=True,
    key_dir=MOUNT,
)


def container_env(
    signed: bool, allow_unsigned: bool, engine: EngineContainer = TORCHSERVE
) -> list[dict]:
    """The container's environment: where the handler finds the public key (``signed``), or
    that it serves unsigned archives (only when the export was told to allow them)."""
    env = []
    if signed:
        key = f"{engine.key_dir}/{PUBLIC_KEY_FILE}"
        env.append({"name": "DISTILLSERVE_PUBLIC_KEY", "value": key})
    if allow_unsigned:
        env.append({"name": "DISTILLSERVE_ALLOW_UNSIGNED", "value": "1"})
    return env


def shared_memory_volume() -> tuple[dict, dict]:
    """A memory-backed ``/dev/shm``: the volume and its mount."""
    return (
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "dshm", "mountPath": "/dev/shm"},
    )


def kserve_manifests(
    name: str, image: str, storage_uri: str, env: list[dict], engine: EngineContainer
) -> list[dict]:
    """A custom ServingRuntime running ``engine`` from ``image``, and an InferenceService of
    the layout at ``storage_uri`` on it (KServe mounts it at ``MOUNT``), protocol v2."""
    runtime = f"{name}-{engine.name}"
    container = {
        "name": "kserve-container",
        "image": image,
        "args": engine.args,
        "env": env,
        "ports": [{"containerPort": engine.http_port, "protocol": "TCP"}],
        "resources": RESOURCES,
    }
    spec: dict = {
        "supportedModelFormats": [{**engine.model_format, "autoSelect": False}],
        "protocolVersions": engine.protocols,
        "containers": [container],
    }
    if engine.shared_memory:
        volume, mount = shared_memory_volume()
        container["volumeMounts"] = [mount]
        spec["volumes"] = [volume]
    return [
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "ServingRuntime",
            "metadata": {"name": runtime},
            "spec": spec,
        },
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {
                "predictor": {
                    "model": {
                        "modelFormat": {"name": engine.model_format["name"]},
                        "runtime": runtime,
                        "protocolVersion": "v2",
                        "storageUri": storage_uri,
                    }
                }
            },
        },
    ]
