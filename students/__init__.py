"""Turn a big image model into a small, fast student: data, zoo, distill, prune, quantize, export.

Pure PyTorch: nothing here imports TorchServe. Submodules are imported on demand so that
``import distillserve.students`` stays cheap.
"""
