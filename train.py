"""Trains FCN-BiSeNetV1: flags in, ``bisenet_jax.train.loop.train_and_evaluate`` out.

  python train.py --config configs/r18.py:demo                  # embedded demo, a few minutes
  python train.py --config configs/r18.py --workdir runs/r18 \
      --config.data.root=/data/cityscapes   # ImageNet backbone: config.init.backbone's default

Rerunning a command with the same ``--workdir`` resumes it. Launched as several processes
(SLURM, a TPU pod slice, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID),
``bisenet_jax.parallel.setup`` connects them first.
"""

import argparse
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bisenet_jax.cli import DISTRIBUTED_CHOICES, DISTRIBUTED_HELP, user_errors_exit
from bisenet_jax.errors import UserError
from bisenet_jax.train import config as config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/r18.py[:demo]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and logs go (default: runs/<config name>).')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', DISTRIBUTED_CHOICES, DISTRIBUTED_HELP)


def default_workdir(config_path: str) -> str:
  name, _, variant = config_path.partition(':')
  stem = os.path.splitext(os.path.basename(name))[0]
  return os.path.join('runs', f'{stem}_{variant}' if variant else stem)


@user_errors_exit
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  # Imported after flag parsing: absl flags must be parsed before grain's workers start.
  from bisenet_jax import parallel
  from bisenet_jax.train.loop import train_and_evaluate
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS['config'].config_filename)
  parallel.setup(_DISTRIBUTED.value)
  train_and_evaluate(_CONFIG.value, workdir)


def config_arguments(argv: list[str]) -> tuple[str | None, list[str]]:
  """The ``--config`` value and the keys of every ``--config.KEY[=VALUE]`` in ``argv``, read
  before absl parses them (which stops at the first unknown key with a bare message)."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument('--config')
  known, rest = parser.parse_known_args(argv[1:])
  keys = [arg[len('--config.'):].partition('=')[0] for arg in rest if arg.startswith('--config.')]
  return known.config, keys


def parse_flags(argv):
  """absl's flag parsing, after checking the config file and every ``--config.KEY`` ourselves,
  so that a missing file, an unknown variant and a misspelt or renamed key are one line."""
  try:
    path, keys = config_arguments(argv)
    if path is not None:
      config_lib.check_override_keys(config_lib.load_config_file(path), keys)
    return flags.FLAGS(argv)
  except (UserError, flags.Error) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
