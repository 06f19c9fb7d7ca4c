"""Measure: the model and handler ceilings, served throughput through a real TorchServe against
TorchServe's floor and the built-in handler, the runtimes and distillation speed, and the reports
of ``distillserve bench`` (recorded runs in ``docs/bench/``)."""
