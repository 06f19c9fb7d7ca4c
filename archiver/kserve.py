"""``export-kserve``: the storage layout KServe (and plain Kubernetes) runs TorchServe from.

    OUT/config/config.properties   server settings with a model_snapshot of every archive
    OUT/config/archive-signing.pub.pem  the key the pods' handlers verify the archives with
    OUT/model-store/*.mar          the archives
    OUT/Dockerfile                 TorchServe 0.12's CPU image + the archives' exact torch
    OUT/manifests/kserve.yaml      a custom ServingRuntime for TorchServe + an InferenceService
    OUT/manifests/kubernetes.yaml  a Deployment + Service + HorizontalPodAutoscaler
    OUT/manifests/storage.yaml     the PersistentVolumeClaim they mount + a Pod to fill it
    OUT/README.md                  the commands: build the image, fill the storage, apply

The layout (config/ and model-store/) goes to the storage the pods mount at /mnt/models: the
claim in storage.yaml, or any KServe storage URI. KServe is retiring its built-in TorchServe
runtime, hence the custom one; /v2/health/* answer (``ts_open_inference_protocol``).

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

from distillserve.archiver.image import default_image, dockerfile, runtime_versions
from distillserve.archiver.kserve_common import (
    INFERENCE_PORT,
    METRICS_PORT,
    MOUNT,
    POD_CORES,
    PUBLIC_KEY_FILE,
    TORCHSERVE,
    container_env,
    kserve_manifests,
)
from distillserve.archiver.kubernetes import (
    kubernetes_manifests,
    storage_manifests,
    write_manifests,
)
from distillserve.archiver.mar import inspect_archive
from distillserve.archiver.properties import ServerConfig
from distillserve.archiver.signing import Trust
from distillserve.errors import ArchiveError

__all__ = ["export_kserve", "oversubscribed"]


def _model_config(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as archive:
        try:
            return yaml.safe_load(archive.read("model-config.yaml")) or {}
        except KeyError:
            return {}


def oversubscribed(mars: list[Path], cores: int = POD_CORES) -> list[str]:
    """A line for each archive whose workers x threads exceed the pods' ``cores``: TorchServe
    runs the count in its signed model-config.yaml whatever the pod's limit (an archive of
    'auto' workers names none and runs one per core of the pod)."""
    lines = []
    for mar in mars:
        config = _model_config(mar)
        workers = int(config.get("maxWorkers") or config.get("minWorkers") or cores)
        threads = int((config.get("handler") or {}).get("threads") or 1)
        if workers * threads > cores:
            lines.append(
                f"{mar.name} runs {workers} workers x {threads} thread(s) (its model-config.yaml) "
                f"and the pods are limited to {cores} CPUs: they will contend; rebuild it with "
                f"archive.min_workers/max_workers at most {max(1, cores // threads)}, or 'auto' "
                "(one per core of the host that serves)"
            )
    return lines


def _snapshot(mars: list[Path], trust: Trust) -> dict:
    models: dict = {}
    for mar in mars:
        info = inspect_archive(mar, trust)
        config = _model_config(mar)
        versions = models.setdefault(info["model_name"], {})
        if info["version"] in versions:
            raise ArchiveError(f"{info['model_name']} {info['version']} is given twice")
        versions[info["version"]] = {
            "defaultVersion": not versions,
            "marName": mar.name,
            # no count in model-config.yaml ('auto': one per core): the pod's cores
            "minWorkers": config.get("minWorkers", POD_CORES),
            "maxWorkers": config.get("maxWorkers", POD_CORES),
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
            "ts_open_inference_protocol": "true",
            "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        },
    )


def _readme(name: str, image: str, storage_uri: str) -> str:
    claim = f"{name}-models"
    return f"""# Deploying these archives

1. The image: TorchServe 0.12's CPU image with the torch the archives were built with.

       docker build -t {image} . && docker push {image}

2. The storage the pods mount at {MOUNT} (config/ and model-store/ from this folder):

       kubectl apply -f manifests/storage.yaml        # the claim {claim} and a fill pod
       kubectl wait --for=condition=Ready pod/{claim}-fill
       kubectl cp config {claim}-fill:{MOUNT}/config
       kubectl cp model-store {claim}-fill:{MOUNT}/model-store
       kubectl delete pod {claim}-fill

   With KServe, any storage URI it can read works instead (the InferenceService reads
   `{storage_uri}`): upload config/ and model-store/ there.

3. Run it, with plain Kubernetes or with KServe:

       kubectl apply -f manifests/kubernetes.yaml     # Deployment, Service, autoscaler
       kubectl apply -f manifests/kserve.yaml         # ServingRuntime + InferenceService

Inference and metrics listen on all interfaces inside the pod with token authorization off:
authenticate at your gateway or mesh. The management API stays on the pod's loopback.
"""


def export_kserve(
    mars: list[Path],
    out: Path,
    *,
    name: str = "distillserve",
    image: str | None = None,
    storage_uri: str | None = None,
    trust: Trust | None = None,
) -> Path:
    """Write the layout, the image's Dockerfile and the manifests for ``mars`` under ``out``.

    ``image`` is the name the manifests run (default: a local name derived from the archives'
    torch); ``storage_uri`` where KServe reads the layout (default: the claim in storage.yaml).
    Every archive is verified under ``trust`` (default: the keys' default locations) first; its
    public key goes into config/ and the pods' handlers verify again with it.
    """
    if not mars:
        raise ArchiveError("export-kserve needs at least one .mar")
    trust = trust or Trust.resolve()
    snapshot = _snapshot(mars, trust)
    versions = runtime_versions(mars)
    image = image or default_image(versions)
    storage_uri = storage_uri or f"pvc://{name}-models"
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "model-store").mkdir(exist_ok=True)
    (out / "manifests").mkdir(exist_ok=True)
    for mar in mars:
        shutil.copy2(mar, out / "model-store" / mar.name)
    if trust.public_key is not None:
        shutil.copy2(trust.public_key, out / "config" / PUBLIC_KEY_FILE)
    env = container_env(trust.public_key is not None, trust.allow_unsigned)
    _server_config(snapshot).write(
        out / "config" / "config.properties",
        "Written by distillserve export-kserve; archiver/kserve.py explains the choices.",
    )
    (out / "Dockerfile").write_text(dockerfile(versions))
    (out / "README.md").write_text(_readme(name, image, storage_uri))
    manifests = {
        "kserve.yaml": kserve_manifests(name, image, storage_uri, env, TORCHSERVE),
        "kubernetes.yaml": kubernetes_manifests(name, image, env),
        "storage.yaml": storage_manifests(name),
    }
    write_manifests(out / "manifests", manifests)
    return out
