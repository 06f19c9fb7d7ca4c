"""Search: ``distillserve tune`` (an Optuna search of a recipe's space, its finalists
cross-validated) and ``distillserve compare`` (variant recipes side by side)."""
