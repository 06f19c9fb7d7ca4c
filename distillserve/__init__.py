"""distillserve: distill big PyTorch image models into small, fast students and serve them with
TorchServe.

    distillserve.students   build a student: data, zoo, distillation, pruning, quantization,
                            export, the artifact contract (pure PyTorch)
    distillserve.archiver   package: artifact -> .mar, .mar -> KServe/Kubernetes layout,
                            config.properties, the model store's index
    distillserve.handlers   the TorchServe handler shipped inside every .mar
    distillserve.serving    operate a server: start/stop, REST/gRPC/management clients,
                            versions, A/B, load and fault checks
    distillserve.bench      measure: models, handler, served throughput, comparisons
    distillserve.scripts    the ``distillserve`` command line and the demo
    distillserve.errors     the one exception tree
"""

__version__ = "0.1.0"
