"""What the KServe and the plain Kubernetes deployments of ``export-kserve`` share: where the
layout is mounted, the ports, how TorchServe is started from it, and what a pod asks for."""

from __future__ import annotations

__all__ = [
    "INFERENCE_PORT",
    "METRICS_PORT",
    "MOUNT",
    "PUBLIC_KEY_FILE",
    "RESOURCES",
    "TORCHSERVE_ARGS",
    "container_env",
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
# The archives' signing public key, beside config.properties in the layout; the handler reads
# its location from the container's environment.
PUBLIC_KEY_FILE = "archive-signing.pub.pem"


def container_env(signed: bool, allow_unsigned: bool) -> list[dict]:
    """The container's environment: where the handler finds the public key (``signed``), or
    that it serves unsigned archives (only when the export was told to allow them)."""
    env = []
    if signed:
        key = f"{MOUNT}/config/{PUBLIC_KEY_FILE}"
        env.append({"name": "DISTILLSERVE_PUBLIC_KEY", "value": key})
    if allow_unsigned:
        env.append({"name": "DISTILLSERVE_ALLOW_UNSIGNED", "value": "1"})
    return env
