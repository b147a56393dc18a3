"""``python -m bisenet_jax.bench``: throughput, FLOPs, MFU, memory, scaling; PyTorch beside."""
