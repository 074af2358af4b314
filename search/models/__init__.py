"""Segmenters and embedders, one module per backend, built through `registry`."""
