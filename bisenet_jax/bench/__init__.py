"""``python -m bisenet_jax.bench``: throughput, FLOPs, MFU, memory and scaling, with PyTorch beside."""
