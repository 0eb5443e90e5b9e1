"""The filter stage: checks on each generation, each rejection with its reason."""
