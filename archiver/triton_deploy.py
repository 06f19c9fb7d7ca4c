"""``export-triton --deploy DIR``: what runs a Triton model repository (``export_triton``) on
Kubernetes, with KServe or without:

    REPOSITORY/archive-signing.pub.pem  the key the handlers verify the archives with (Triton
                                        reads only the repository's folders as models)
    DIR/Dockerfile                      Python 3.11, the archives' torch, the bundled Triton
    DIR/manifests/kserve.yaml           a ServingRuntime for this Triton + an InferenceService
    DIR/manifests/kubernetes.yaml       a Deployment + Service + HorizontalPodAutoscaler
    DIR/manifests/storage.yaml          the PersistentVolumeClaim they mount + a Pod to fill it
    DIR/README.md                       the commands: build the image, fill the storage, apply

The repository goes to the storage the pods mount at /mnt/models (the claim, or any KServe
storage URI). KServe's own Triton runtime runs NVIDIA's image, which has neither torch nor
Python 3.11 for the archives' handler core, hence the custom runtime. Inside the pod Triton
listens on all interfaces (HTTP 8080, gRPC 9000, metrics 8002, as KServe's runtime does) with
the model-control API off (Triton's default mode: the repository is loaded at start).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from distillserve.archiver.image import default_image, runtime_versions, triton_dockerfile
from distillserve.archiver.kserve_common import (
    MOUNT,
    PUBLIC_KEY_FILE,
    TRITON,
    container_env,
    kserve_manifests,
)
from distillserve.archiver.kubernetes import (
    kubernetes_manifests,
    storage_manifests,
    write_manifests,
)
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import needs_torch
from distillserve.errors import ArchiveError

__all__ = ["export_triton_deploy"]


def _readme(name: str, image: str, storage_uri: str, repository: Path) -> str:
    claim = f"{name}-models"
    return f"""# Deploying this Triton model repository

1. The image: Python 3.11 with the torch the archives were built with and the Triton server
   nvidia-pytriton 0.7.0 bundles (CPU, Python backend).

       docker build -t {image} . && docker push {image}

2. The storage the pods mount at {MOUNT}: the repository itself ({repository}).

       kubectl apply -f manifests/storage.yaml        # the claim {claim} and a fill pod
       kubectl wait --for=condition=Ready pod/{claim}-fill
       kubectl cp {repository}/. {claim}-fill:{MOUNT}
       kubectl delete pod {claim}-fill

   With KServe, any storage URI it can read works instead (the InferenceService reads
   `{storage_uri}`): upload the repository's contents there.

3. Run it, with plain Kubernetes or with KServe:

       kubectl apply -f manifests/kubernetes.yaml     # Deployment, Service, autoscaler
       kubectl apply -f manifests/kserve.yaml         # ServingRuntime + InferenceService

Triton answers KServe v2 on HTTP 8080 and gRPC 9000 on all interfaces inside the pod, metrics
on 8002: authenticate at your gateway or mesh. Each model's handler verifies its archive's
files against {MOUNT}/{PUBLIC_KEY_FILE} when Triton loads it.
"""


def export_triton_deploy(
    archives: list[Path],
    repository: Path,
    out: Path,
    *,
    name: str = "distillserve",
    image: str | None = None,
    storage_uri: str | None = None,
    trust: Trust | None = None,
) -> Path:
    """The image's Dockerfile, the manifests and README under ``out`` for ``repository``
    (written by ``export_triton`` from ``archives``, which give the image's versions); the
    public key of ``trust`` is copied to the repository's top."""
    if out.resolve().is_relative_to(repository.resolve()):
        raise ArchiveError(f"--deploy {out} is inside the repository (Triton would load it)")
    trust = trust or Trust.resolve()
    versions = runtime_versions(archives)
    image = image or default_image(versions, "triton")
    storage_uri = storage_uri or f"pvc://{name}-models"
    out.mkdir(parents=True, exist_ok=True)
    if trust.public_key is not None:
        shutil.copy2(trust.public_key, repository / PUBLIC_KEY_FILE)
    env = container_env(trust.public_key is not None, trust.allow_unsigned, TRITON)
    # every version the pods will load (the repository's own build-info; already verified)
    (out / "Dockerfile").write_text(triton_dockerfile(versions, with_torch=needs_torch(repository)))
    (out / "README.md").write_text(_readme(name, image, storage_uri, repository))
    write_manifests(
        out / "manifests",
        {
            "kserve.yaml": kserve_manifests(name, image, storage_uri, env, TRITON),
            "kubernetes.yaml": kubernetes_manifests(name, image, env, TRITON),
            "storage.yaml": storage_manifests(name),
        },
    )
    return out
