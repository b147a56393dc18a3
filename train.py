"""Trains FCN-BiSeNetV1: flags in, ``bisenet_jax.train.loop.train_and_evaluate`` out.

  python train.py --config configs/r18.py:demo                  # embedded demo, a few minutes
  python train.py --config configs/r18.py --workdir runs/r18 \
      --config.data.root=/data/cityscapes --config.init.backbone=resnet18_v1c-b5776b93.pth

Rerunning a command with the same ``--workdir`` resumes it. Launched as several processes
(GPU cluster, TPU pod), ``jax.distributed.initialize()`` connects them first.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bisenet_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/r18.py[:demo]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and logs go (default: runs/<config name>).')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'yes', 'no'],
    "Call jax.distributed.initialize(): 'auto' does when a cluster launcher is detected "
    '(SLURM with several tasks, a TPU pod slice, or JAX_COORDINATOR_ADDRESS set).')


def launched_as_several_processes() -> bool:
  env = os.environ
  return bool(env.get('JAX_COORDINATOR_ADDRESS') or int(env.get('SLURM_NTASKS', '1')) > 1 or
              ',' in env.get('TPU_WORKER_HOSTNAMES', '') or
              int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)


def default_workdir(config_path: str) -> str:
  name, _, variant = config_path.partition(':')
  stem = os.path.splitext(os.path.basename(name))[0]
  return os.path.join('runs', f'{stem}_{variant}' if variant else stem)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  import jax  # After flag parsing: absl flags must be parsed before grain's workers start.
  if _DISTRIBUTED.value == 'yes' or (_DISTRIBUTED.value == 'auto' and
                                     launched_as_several_processes()):
    jax.distributed.initialize()
  from bisenet_jax.train.loop import train_and_evaluate
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS['config'].config_filename)
  try:
    train_and_evaluate(_CONFIG.value, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
