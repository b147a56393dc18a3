"""Shared test support: running the commands (in this process, as subprocesses, as several
processes of one run), simulated devices, and shared fixtures."""

import contextlib
import hashlib
import io
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bisenet_jax.serve.process import free_port  # noqa: F401 (the tests' import of it)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / 'data'


# Two tiers: `python -m pytest -q` runs the quick one (every module, minutes on 2 cores);
# `--slow` runs the tests marked slow instead: several processes, 8 devices at the demo's size,
# ONNX exports at real sizes, kill-and-resume, the end-to-end runs. CI runs both.
def pytest_addoption(parser):
  parser.addoption('--slow', action='store_true',
                   help='run the slow tier (tests marked slow) instead of the quick one')


def pytest_collection_modifyitems(config, items):
  slow_tier = config.getoption('--slow')
  keep = [item for item in items if ('slow' in item.keywords) == slow_tier]
  config.hook.pytest_deselected(items=[item for item in items if item not in keep])
  items[:] = keep


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs ``python <args>`` from the repository root, capturing output (never raises)."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=900)


def cpu_devices(count: int) -> dict:
  """Environment for a subprocess that should see ``count`` CPU devices."""
  return {'XLA_FLAGS': f'--xla_force_host_platform_device_count={count}'}


def launch_processes(args: list[str], processes: int, devices_per_process: int, log_dir: Path,
                     env: dict | None = None) -> list[subprocess.Popen]:
  """Starts ``python <args>`` as the ``processes`` processes of one run on this machine.

  Exactly README's generic launch: every process gets JAX_COORDINATOR_ADDRESS (a free port on
  127.0.0.1), JAX_NUM_PROCESSES and its JAX_PROCESS_ID, and sees ``devices_per_process`` CPU
  devices. Each one's output goes to ``<log_dir>/process_<i>.log`` (``.log_path``).
  """
  coordinator = f'127.0.0.1:{free_port()}'
  started = []
  for index in range(processes):
    process_env = {**os.environ, **cpu_devices(devices_per_process), **(env or {}),
                   'JAX_COORDINATOR_ADDRESS': coordinator, 'JAX_NUM_PROCESSES': str(processes),
                   'JAX_PROCESS_ID': str(index)}
    log_path = Path(log_dir) / f'process_{index}.log'
    with log_path.open('w') as log:
      process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=process_env, stdout=log,
                                 stderr=subprocess.STDOUT, text=True)
    process.log_path = log_path
    started.append(process)
  return started


def wait_for(processes: list[subprocess.Popen], timeout: float = 900) -> list[str]:
  """Waits for every process; returns each one's output (the caller checks return codes)."""
  deadline = time.time() + timeout
  for process in processes:
    try:
      process.wait(max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      raise
  return [process.log_path.read_text() for process in processes]


def rewind(source: Path, destination: Path, step: int) -> Path:
  """A copy of a training workdir as it was at checkpoint ``step`` (later checkpoints and
  metrics rows removed): resuming it replays the steps after ``step``."""
  import json
  import shutil

  from bisenet_jax import checkpoint
  shutil.copytree(source, destination)
  for later in checkpoint.finalized_steps(destination):
    if later > step:
      shutil.rmtree(destination / checkpoint.TRAIN_CHECKPOINTS / str(later))
  rows = (destination / 'metrics.jsonl').read_text().splitlines()
  (destination / 'metrics.jsonl').write_text(
      ''.join(f'{row}\n' for row in rows if json.loads(row)['step'] <= step))
  return destination


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
  """Runs a repository script in this process (fast) as if from the command line."""
  stdout, stderr, code = io.StringIO(), io.StringIO(), 0
  argv = sys.argv
  sys.argv = [script, *args]
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      runpy.run_path(str(ROOT / script), run_name='__main__')
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
  finally:
    sys.argv = argv
  return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope='session')
def torch_threads():
  import torch
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  return torch


@pytest.fixture(scope='session')
def opencv4_golden():
  """What the data code's OpenCV calls give on OpenCV 4 (tests/data/make_opencv4_golden.py)."""
  with np.load(DATA / 'opencv4_golden.npz') as golden:
    return dict(golden)


@pytest.fixture(scope='session')
def sha256():
  return lambda array: hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()


@pytest.fixture
def dataset(tmp_path):
  """A 3-class folder dataset with one 2x3 frame 'a' in 'val'; returns its root."""
  from labelled_files import write_folder_dataset
  return write_folder_dataset(tmp_path)


@pytest.fixture(scope='session')
def random_r18_pth(tmp_path_factory):
  """The PyTorch reference R18 with random weights (seed 3), saved as an official ``.pth``."""
  from bisenet_jax.bench.torch_models import bisenetv1 as torch_model
  import torch_support
  path = tmp_path_factory.mktemp('random_r18') / 'official.pth'
  model = torch_support.randomize_(torch_model.build_reference('r18'), seed=3)
  torch_support.save_official_checkpoint(model, path, kind='full')
  return path


@pytest.fixture(scope='session', autouse=True)
def imagenet_cache(tmp_path_factory):
  """An empty cache of ImageNet files (BISENET_JAX_CACHE, inherited by subprocesses): no test
  reads or fills the user's, nor passes because it happens to hold a file."""
  previous = os.environ.get('BISENET_JAX_CACHE')
  os.environ['BISENET_JAX_CACHE'] = str(tmp_path_factory.mktemp('bisenet_jax_cache'))
  yield
  if previous is None:
    os.environ.pop('BISENET_JAX_CACHE', None)
  else:
    os.environ['BISENET_JAX_CACHE'] = previous
