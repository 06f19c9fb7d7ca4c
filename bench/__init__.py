"""Measure: the model and handler ceilings, served throughput through a real TorchServe, student
variants side by side (``compare``), and the reports of ``distillserve bench``."""
