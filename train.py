"""Trains FCN-BiSeNetV1: flags in, ``bisenet_jax.train.loop.train_and_evaluate`` out.

  python train.py --config configs/r18.py:demo                  # embedded demo, a few minutes
  python train.py --config configs/r18.py --workdir runs/r18 \
      --config.data.root=/data/cityscapes --config.init.backbone=resnet18_v1c-b5776b93.pth

Rerunning a command with the same ``--workdir`` resumes it. Launched as several processes
(SLURM, a TPU pod slice, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID),
``bisenet_jax.parallel.setup`` connects them first.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bisenet_jax.cli import user_errors_exit
from bisenet_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/r18.py[:demo]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and logs go (default: runs/<config name>).')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'yes', 'no'],
    "Connect the processes of a multi-process launch: 'auto' when SLURM with several tasks, a "
    'TPU pod slice, Open MPI or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID '
    'are detected.')


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
  train_and_evaluate(load_config(), workdir)


def load_config():
  """The --config value. config_flags defers a file that failed to load to the first use."""
  config = _CONFIG.value
  try:
    config.keys()
  except OSError:
    raise UserError(f'cannot load the config file {flags.FLAGS["config"].config_filename!r}: '
                    'give an existing file, e.g. --config configs/r18.py:demo') from None
  return config


def parse_flags(argv):
  """absl's flag parsing, with a one-line error for a bad config file, variant or key.

  The config file is loaded (and ``--config.*`` overrides applied) while flags are parsed, so
  its errors arrive here, before ``main``.
  """
  try:
    return flags.FLAGS(argv)
  except (UserError, flags.Error) as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:  # A --config.<key> that the config does not have.
    key, _, hint = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').replace("'", '')
                            .split()).partition(' ')
    fail(f'the config has no key {key!r}. {hint}'.strip())


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
