"""Plain Kubernetes manifests for the layout ``export-kserve`` writes: a Deployment running the
image, a Service, a HorizontalPodAutoscaler, and the storage the layout lives on: a
PersistentVolumeClaim and a short-lived Pod that mounts it read-write so the layout can be copied
in with ``kubectl cp`` (the exported README.md gives the commands)."""

from __future__ import annotations

from distillserve.archiver.kserve_common import (
    INFERENCE_PORT,
    METRICS_PORT,
    MOUNT,
    RESOURCES,
    TORCHSERVE_ARGS,
)

__all__ = ["kubernetes_manifests", "storage_manifests"]


def kubernetes_manifests(name: str, image: str, env: list[dict] | None = None) -> list[dict]:
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
                                "env": env or [],
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
