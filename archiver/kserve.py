"""``export-kserve``: the storage layout KServe (and plain Kubernetes) runs TorchServe from.

    OUT/config/config.properties   server settings with a model_snapshot of every archive
    OUT/model-store/*.mar          the archives
    OUT/manifests/kserve.yaml      a custom ServingRuntime for TorchServe + an InferenceService
    OUT/manifests/kubernetes.yaml  a Deployment + Service + HorizontalPodAutoscaler

Upload OUT/config and OUT/model-store to the storage URI (the runtime mounts it at
/mnt/models). KServe is retiring its built-in TorchServe runtime, hence the custom one.

Inside a pod the inference and metrics ports must listen on all interfaces. TorchServe's token
keys are generated inside the pod at start, where neither kubelet probes nor in-cluster clients
can read them, so token authorization is off and the cluster's gateway or mesh authenticates;
the management API, which could load and unload models, listens on the pod's loopback only and
the registration API stays off.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import yaml

from distillserve.archiver.mar import inspect_archive
from distillserve.archiver.properties import ServerConfig
from distillserve.errors import ArchiveError

__all__ = ["export_kserve"]

MOUNT = "/mnt/models"
INFERENCE_PORT = 8085
METRICS_PORT = 8082
DEFAULT_IMAGE = "pytorch/torchserve:0.12.0-cpu"
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


def _model_config(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as archive:
        try:
            return yaml.safe_load(archive.read("model-config.yaml")) or {}
        except KeyError:
            return {}


def _snapshot(mars: list[Path]) -> dict:
    models: dict = {}
    for mar in mars:
        info = inspect_archive(mar)
        config = _model_config(mar)
        versions = models.setdefault(info["model_name"], {})
        if info["version"] in versions:
            raise ArchiveError(f"{info['model_name']} {info['version']} is given twice")
        versions[info["version"]] = {
            "defaultVersion": not versions,
            "marName": mar.name,
            "minWorkers": config.get("minWorkers", 1),
            "maxWorkers": config.get("maxWorkers", 1),
            "batchSize": config.get("batchSize", 1),
            "maxBatchDelay": config.get("maxBatchDelay", 100),
            "responseTimeout": config.get("responseTimeout", 120),
        }
    count = sum(len(v) for v in models.values())
    return {"name": "startup.cfg", "modelCount": count, "models": models}


def _server_config(snapshot: dict) -> ServerConfig:
    """The pod's TorchServe: inference and metrics on all interfaces, no tokens (see above),
    every archive of the snapshot loaded at start."""
    return ServerConfig(
        model_store=f"{MOUNT}/model-store",
        host="0.0.0.0",
        inference_port=INFERENCE_PORT,
        metrics_port=METRICS_PORT,
        token_auth=False,
        metrics_mode="prometheus",
        load_models="all",
        extra={
            "enable_envvars_config": "true",
            "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        },
    )


def _kserve_manifests(name: str, image: str, storage_uri: str) -> list[dict]:
    runtime = f"{name}-torchserve"
    return [
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "ServingRuntime",
            "metadata": {"name": runtime},
            "spec": {
                "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
                "protocolVersions": ["v1", "v2"],
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": image,
                        "args": TORCHSERVE_ARGS,
                        "ports": [{"containerPort": INFERENCE_PORT, "protocol": "TCP"}],
                        "resources": RESOURCES,
                    }
                ],
            },
        },
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {
                "predictor": {
                    "model": {
                        "modelFormat": {"name": "pytorch"},
                        "runtime": runtime,
                        "protocolVersion": "v2",
                        "storageUri": storage_uri,
                    }
                }
            },
        },
    ]


def _kubernetes_manifests(name: str, image: str) -> list[dict]:
    labels = {"app.kubernetes.io/name": name}
    probe = {"httpGet": {"path": "/ping", "port": INFERENCE_PORT}, "periodSeconds": 10}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "torchserve",
                                "image": image,
                                "args": TORCHSERVE_ARGS,
                                "ports": [
                                    {"name": "http", "containerPort": INFERENCE_PORT},
                                    {"name": "metrics", "containerPort": METRICS_PORT},
                                ],
                                "readinessProbe": {**probe, "initialDelaySeconds": 10},
                                "livenessProbe": {**probe, "initialDelaySeconds": 60},
                                "resources": RESOURCES,
                                "volumeMounts": [
                                    {"name": "models", "mountPath": MOUNT, "readOnly": True}
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "models",
                                "persistentVolumeClaim": {"claimName": f"{name}-models"},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "http", "port": INFERENCE_PORT, "targetPort": "http"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
                ],
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1,
                "maxReplicas": 4,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    ]


class _PlainDumper(yaml.SafeDumper):
    """Writes shared objects out in full: no ``&id`` anchors in manifests people read."""

    def ignore_aliases(self, data) -> bool:
        return True


def export_kserve(
    mars: list[Path],
    out: Path,
    *,
    name: str = "distillserve",
    image: str = DEFAULT_IMAGE,
    storage_uri: str = "pvc://distillserve-models",
) -> Path:
    """Write the layout and manifests for ``mars`` under ``out``; returns ``out``."""
    if not mars:
        raise ArchiveError("export-kserve needs at least one .mar")
    snapshot = _snapshot(mars)
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "model-store").mkdir(exist_ok=True)
    (out / "manifests").mkdir(exist_ok=True)
    for mar in mars:
        shutil.copy2(mar, out / "model-store" / mar.name)
    _server_config(snapshot).write(
        out / "config" / "config.properties",
        "Written by distillserve export-kserve; archiver/kserve.py explains the choices.",
    )
    (out / "manifests" / "kserve.yaml").write_text(
        yaml.dump_all(
            _kserve_manifests(name, image, storage_uri), Dumper=_PlainDumper, sort_keys=False
        )
    )
    (out / "manifests" / "kubernetes.yaml").write_text(
        yaml.dump_all(_kubernetes_manifests(name, image), Dumper=_PlainDumper, sort_keys=False)
    )
    return out
