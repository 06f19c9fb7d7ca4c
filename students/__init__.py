"""Turn a big image model into a small, fast student: data, zoo, distill, quantize, export.

Pure PyTorch: nothing here imports TorchServe. Submodules are imported on demand so that
``import students`` stays cheap.
"""

__version__ = "0.1.0"
