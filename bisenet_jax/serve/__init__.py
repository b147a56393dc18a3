"""The model server: ``python -m bisenet_jax.serve`` (Open Inference Protocol over REST and gRPC,
dynamic batching, Prometheus metrics, the page at /). See docs/serving.md.

Importing this package imports neither kserve nor JAX: ``batching`` is plain Python and NumPy;
``app`` and ``model`` need kserve (the ``serve`` extra).
"""
