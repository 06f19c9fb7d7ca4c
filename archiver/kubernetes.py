"""Plain Kubernetes manifests for the layout ``export-kserve`` (TorchServe) or ``export-triton
--deploy`` (Triton) writes: a Deployment running the engine's image, a Service, a
HorizontalPodAutoscaler, and the storage the layout lives on: a PersistentVolumeClaim and a
short-lived Pod that mounts it read-write so the layout can be copied in with ``kubectl cp``
(the exported README.md gives the commands); ``write_manifests`` writes them as YAML."""

from __future__ import annotations

from pathlib import Path

import yaml

from distillserve.archiver.kserve_common import (
    MOUNT,
    RESOURCES,
    TORCHSERVE,
    EngineContainer,
    shared_memory_volume,
)

__all__ = ["kubernetes_manifests", "storage_manifests", "write_manifests"]


def kubernetes_manifests(
    name: str, image: str, env: list[dict] | None = None, engine: EngineContainer = TORCHSERVE
) -> list[dict]:
    """A Deployment running ``engine`` from ``image`` on the claim ``{name}-models``, a Service
    of its ports and an autoscaler on CPU."""
    labels = {"app.kubernetes.io/name": name}
    probe = {"httpGet": {"path": engine.health_path, "port": "http"}, "periodSeconds": 10}
    mounts = [{"name": "models", "mountPath": MOUNT, "readOnly": True}]
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": f"{name}-models"}}]
    if engine.shared_memory:
        volume, mount = shared_memory_volume()
        mounts.append(mount)
        volumes.append(volume)
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
                                "name": engine.name,
                                "image": image,
                                "args": engine.args,
                                "env": env or [],
                                "ports": [
                                    {"name": port_name, "containerPort": port}
                                    for port_name, port in engine.ports.items()
                                ],
                                "readinessProbe": {**probe, "initialDelaySeconds": 10},
                                "livenessProbe": {**probe, "initialDelaySeconds": 60},
                                "resources": RESOURCES,
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
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
                    {"name": port_name, "port": port, "targetPort": port_name}
                    for port_name, port in engine.ports.items()
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


def storage_manifests(name: str, size: str = "1Gi") -> list[dict]:
    """The claim the Deployment mounts read-only, and a Pod to fill it (delete it afterwards)."""
    claim = f"{name}-models"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{claim}-fill", "labels": {"app.kubernetes.io/name": claim}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "fill",
                        "image": "busybox:1.36",
                        "command": ["sh", "-c", "sleep 3600"],
                        "volumeMounts": [{"name": "models", "mountPath": MOUNT}],
                    }
                ],
                "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    ]


class _PlainDumper(yaml.SafeDumper):
    """Writes shared objects out in full: no ``&id`` anchors in manifests people read."""

    def ignore_aliases(self, data) -> bool:
        return True


def write_manifests(folder: Path, manifests: dict[str, list[dict]]) -> None:
    """Each file name's documents as one multi-document YAML file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, documents in manifests.items():
        text = yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False)
        (folder / file).write_text(text)
