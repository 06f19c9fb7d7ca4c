"""What the KServe and the plain Kubernetes deployments of ``export-kserve`` share: where the
layout is mounted, the ports, how TorchServe is started from it, and what a pod asks for."""

from __future__ import annotations

__all__ = ["INFERENCE_PORT", "METRICS_PORT", "MOUNT", "RESOURCES", "TORCHSERVE_ARGS"]

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
