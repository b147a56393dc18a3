"""Several processes on one machine form one run, as on a cluster: exact, resumable, never hung.

Processes are started the way README's generic launch does (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) and meet on 127.0.0.1 through gloo, each with 2 simulated
CPU devices. One scenario covers the layouts and the failure:

1. U: 1 process x 4 devices trains 9 steps from scratch (checkpoints at 3, 6, 9): the reference.
2. K: 2 processes x 2 devices resume U's step-3 checkpoint; once they have made progress one is
   SIGKILLed; the survivor must exit non-zero within the heartbeat timeout, leaving only
   complete checkpoints.
3. R: the same 2-process command again resumes from the newest complete checkpoint and
   finishes: every step's loss and the final parameters equal U's.
4. Z: 1 process x 4 devices resumes R's (2-process) step-6 checkpoint and finishes like U.
"""

import json
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bisenet_jax import checkpoint
from conftest import launch_processes, rewind, run_cli, cpu_devices, wait_for

STEPS, EVERY = 9, 3
HEARTBEAT_S = 10
CONFIG = ['--config', 'configs/r18.py:demo',
          '--config.data.synthetic.num_train=16', '--config.data.synthetic.num_val=2',
          '--config.data.synthetic.height=96', '--config.data.synthetic.width=192',
          '--config.data.resize_to=(96,192)', '--config.data.crop_size=(96,96)',
          '--config.batch_size=8', f'--config.total_steps={STEPS}',
          '--config.model.dtype=float64', '--config.optimizer.warmup_steps=2',
          '--config.log_every_steps=1',
          f'--config.checkpoint_every_steps={EVERY}', '--config.eval_every_steps=100000',
          '--config.eval_batch_per_device=1']


# In float64, so that the only difference between layouts, the order of float additions in the
# all-reduces, stays at rounding level instead of being amplified by training (in float32 the
# stem's BatchNorm-cancelled gradients grow it to ~1e-3 of the loss within a few steps).
X64 = {'JAX_ENABLE_X64': '1'}


def train_args(data: Path, workdir: Path) -> list[str]:
  return ['train.py', *CONFIG, f'--config.data.root={data}', '--workdir', str(workdir)]


def losses(workdir: Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps = [row['step'] for row in rows if 'loss' in row]
  assert len(steps) == len(set(steps)), 'a step was logged twice (by two processes?)'
  return {row['step']: row['loss'] for row in rows if 'loss' in row}


def params(workdir: Path):
  return jax.device_get(checkpoint.restore_model(workdir)[1])


def assert_same_losses(got: dict, expected: dict):
  print('max relative loss difference:',
        max(abs(got[k] - expected[k]) / abs(expected[k]) for k in expected))
  assert got == pytest.approx(expected, rel=1e-10)


def assert_same_params(a, b):
  differences = [float(np.max(np.abs(x - y)))
                 for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  print('max parameter difference:', max(differences))
  assert max(differences) < 1e-8


def train_two_processes(data: Path, workdir: Path, log_dir: Path):
  log_dir.mkdir(parents=True, exist_ok=True)
  return launch_processes(train_args(data, workdir), 2, 2, log_dir,
                          env={'BISENET_HEARTBEAT_TIMEOUT': str(HEARTBEAT_S), **X64})


@pytest.mark.slow
def test_two_processes_train_resume_and_survive_a_killed_peer_exactly_like_one(tmp_path):
  data = tmp_path / 'data'
  reference = run_cli(*train_args(data, tmp_path / 'U'), env={**cpu_devices(4), **X64})
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = losses(tmp_path / 'U')
  assert sorted(expected) == list(range(1, STEPS + 1))

  # K: resume U's step 3 with two processes, then kill one once step 4 is logged.
  workdir = rewind(tmp_path / 'U', tmp_path / 'K', EVERY)
  processes = train_two_processes(data, workdir, tmp_path / 'K_logs')
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p in processes):
    if max(losses(workdir), default=0) >= EVERY + 1:
      break
    time.sleep(0.02)
  assert all(p.poll() is None for p in processes), wait_for(processes)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  survivor_output = wait_for(processes[:1], timeout=HEARTBEAT_S + 60)[0]
  assert processes[0].returncode != 0, survivor_output[-3000:]
  # Either it was inside a collective with the lost process, or the heartbeats stopped.
  assert ('lost another process of this run' in survivor_output or
          'JAX distributed service detected fatal errors' in survivor_output), survivor_output
  assert time.time() - killed_at < HEARTBEAT_S + 60
  # Every checkpoint left behind is complete; none belongs to a step the run did not reach.
  left = checkpoint.finalized_steps(workdir)
  assert left and left[-1] < STEPS and left[-1] % EVERY == 0
  assert metrics.exists()

  # R: the same two-process command resumes and finishes like U.
  outputs = wait_for(train_two_processes(data, workdir, tmp_path / 'R_logs'))
  assert all('resumed from' in out for out in outputs[:1]), outputs[0][-3000:]
  assert_same_losses(losses(workdir), expected)
  assert sorted(p.name for p in (workdir / checkpoint.TRAIN_CHECKPOINTS).iterdir()
                if p.name.isdigit()) == ['3', '6', '9']
  assert_same_params(params(workdir), params(tmp_path / 'U'))

  # Z: one process resumes the two-process step-6 checkpoint.
  resumed = rewind(workdir, tmp_path / 'Z', 2 * EVERY)
  result = run_cli(*train_args(data, resumed), env={**cpu_devices(4), **X64})
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_losses(losses(resumed), expected)
  assert_same_params(params(resumed), params(tmp_path / 'U'))
