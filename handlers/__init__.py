"""TorchServe handlers and the framework-free helpers they ship with inside each .mar.

Inside an archive these modules sit flat at the archive root and import each other as top-level
modules; in this repository they form the ``handlers`` package. Nothing here imports ``students``.
"""
