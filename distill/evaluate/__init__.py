"""Evaluation with the R1 protocol: pass@1 over k samples, cons@k, unbiased pass@k."""
