"""Shared fixtures: the PyTorch reference (tests/torch_reference.py) and its converted twins."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / 'data'


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs ``python <args>`` from the repository root, capturing output (never raises)."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture(scope='session')
def torch_threads():
  import torch
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  return torch
