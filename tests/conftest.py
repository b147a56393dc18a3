"""Shared fixtures: the PyTorch reference (tests/torch_reference.py) and its converted twins."""

import contextlib
import hashlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / 'data'


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs ``python <args>`` from the repository root, capturing output (never raises)."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=900)


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
