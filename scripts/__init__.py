"""The ``distillserve`` command line (one thin front end per verb) and the demo."""
