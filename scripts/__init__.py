"""Command-line entry points (``distillserve``) and the small libraries they front:
server control, the REST client, and the demo."""
