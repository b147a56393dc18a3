"""Training task: optimizer and lr schedule, losses, train state and step, the training loop.

Import the submodules directly (``bisenet_jax.train.optim``, ``bisenet_jax.train.losses``);
this package file stays empty so that importing one part does not pull in the others.
"""
