"""Evaluation task: the shared inference function (whole / slide / flip / multi-scale) and metrics.

Import the submodules directly (``bisenet_jax.eval.inference``, ``bisenet_jax.eval.metrics``);
this package file stays empty so that importing one part does not pull in the others.
"""
