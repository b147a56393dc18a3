"""Prints the resolved versions of the packages the project's results depend on."""

from importlib import metadata

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'opencv-python-headless',
            'numpy', 'numba', 'torch', 'tensorflow-datasets', 'jax2onnx', 'onnx', 'onnxruntime')


def version(name: str) -> str:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return 'not installed'


print('resolved: ' + ', '.join(f'{name} {version(name)}' for name in PACKAGES))
