"""Tests of ``python -m bisenet_jax.bench serve``: the counts and fields of its rows (not its
timings), on a tiny model and a real server."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from bisenet_jax import checkpoint, models
from bisenet_jax.bench import serve_load
from bisenet_jax.bench.__main__ import main as bench_main
from bisenet_jax.data import sources
from bisenet_jax.errors import UserError
from bisenet_jax.specs import ModelSpec

FIELDS = {'model', 'checkpoint', 'backend', 'batching', 'max_batch_size', 'concurrency',
          'resolution', 'requests', 'ok', 'refused', 'failed', 'unsent', 'img_per_s',
          'latency_ms_p50', 'latency_ms_p90', 'latency_ms_p99', 'mean_batch_size',
          'model_img_per_s', 'model_best_batch', 'model_ms_batch1', 'throughput_vs_model',
          'p50_overhead_ms', 'load_average', 'cpu', 'server_ms_p50', 'compute_ms_p50'}


def save_zero_fastscnn(path):
  """Fast-SCNN with zero weights: the shapes are all a server needs, and computing them is
  much faster than a random initialisation. Its test Resize target is the frames' 64x128, which
  keeps them as they are."""
  spec = ModelSpec('fastscnn', 19)
  shapes = models.abstract_variables(models.build(spec))
  variables = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
  checkpoint.save_model(path, variables, spec,
                        dataclasses.replace(sources.CITYSCAPES, resize_to=(64, 128)))
  return path


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  return save_zero_fastscnn(tmp_path_factory.mktemp('serve_bench') / 'fastscnn')


@pytest.mark.slow  # Two servers on a JAX model (~25 s on 2 cores).
def test_each_point_accounts_for_every_request(tiny_checkpoint, tmp_path, capsys):
  output = tmp_path / 'serve.jsonl'
  bench_main(['serve', '--checkpoint', str(tiny_checkpoint), '--requests', '8',
              '--concurrency', '1,2', '--input-size', '64x128', '--batching', 'on',
              '--max-batch-size', '2', '--warmup', '1', '--steps', '2',
              '--output', str(output)])
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert [(r['batching'], r['concurrency']) for r in rows] == [('on', 1), ('on', 2)]
  for row in rows:
    assert FIELDS <= row.keys()
    assert row['ok'] + row['refused'] + row['failed'] + row['unsent'] == row['requests'] == 8
    assert row['ok'] == 8  # Far under the server's queue and time limit.
    assert 1 <= row['mean_batch_size'] <= row['max_batch_size']
    assert row['max_batch_size'] == 2
    assert row['latency_ms_p50'] <= row['latency_ms_p90'] <= row['latency_ms_p99']
    assert row['throughput_vs_model'] == pytest.approx(row['img_per_s'] / row['model_img_per_s'])
  printed = capsys.readouterr().out
  assert 'fastscnn batching on: c2' in printed and 'c1 p50' in printed


@pytest.mark.parametrize('url', ['http://example.com:8080', 'http://10.0.0.5:8080',
                                 '192.168.1.2:80', 'https://127.0.0.1:8080', '127.0.0.1'])
def test_a_server_off_this_machine_is_refused(url):
  with pytest.raises(UserError, match='loopback'):
    serve_load.loopback_url(url)


@pytest.mark.parametrize('url,address', [('http://127.0.0.1:8080', '127.0.0.1:8080'),
                                         ('localhost:9000', 'localhost:9000'),
                                         ('http://[::1]:8080/', '[::1]:8080')])
def test_loopback_urls_become_client_addresses(url, address):
  assert serve_load.loopback_url(url) == address


def test_the_cli_refuses_a_remote_url_in_one_line(tiny_checkpoint, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_main(['serve', '--checkpoint', str(tiny_checkpoint), '--url', 'http://10.1.1.1:8080'])
  assert exit_info.value.code == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow  # A JAX server compiling each new size (~40 s on 2 cores).
def test_new_sizes_accounts_for_both_clients(tiny_checkpoint):
  from bisenet_jax.bench import serve_faults
  result = serve_faults.new_sizes(str(tiny_checkpoint), (32, 64), count=2, requests=3,
                                  flags=['--max-batch-size', '1'])
  assert result['steady_idle']['count'] == 3 and result['steady_during']['count'] >= 3
  assert result['new_size_requests'] >= 2
  assert sum(kind['count'] for kind in result['new_size_answers'].values()) == (
      result['new_size_requests'])
  assert result['new_size_request']['count'] == result['new_size_requests']
  assert result['resident_mb_before'] > 0 and result['resident_mb_after'] > 0


def test_a_running_server_is_measured_once_with_its_own_batching(tmp_path, monkeypatch):
  """--url: the batching is the running server's, so each concurrency is one row, labelled
  with what the server's metadata says (not the sweep's default on,off)."""
  checkpoint_path = tmp_path / 'model.onnx'
  checkpoint_path.write_bytes(b'')  # Only its existence is checked: the model is not timed.
  loads = []
  monkeypatch.setattr(serve_load, 'model_speed', lambda *args: {
      'model_runner': 'stub', 'model_ms_batch1': 10.0, 'model_img_per_s': 100.0,
      'model_best_batch': 1, 'model_img_per_s_by_batch': {'1': 100.0}})
  monkeypatch.setattr(serve_load, 'model_metadata', lambda url: {'parameters': {
      'backend': 'float32 ONNX Runtime', 'network': 'model.onnx', 'max_batch_size': 4}})

  def run_load(url, images, load):
    loads.append((url, load.concurrency))
    return {'requests': load.requests, 'ok': load.requests, 'refused': 0, 'failed': 0,
            'unsent': 0, 'wall_s': 1.0, 'img_per_s': 90.0, 'latency_ms_p50': 20.0,
            'latency_ms_p90': 21.0, 'latency_ms_p99': 22.0, 'mean_batch_size': 1.5,
            'server_ms_p50': 15.0, 'compute_ms_p50': 12.0, 'errors': []}

  monkeypatch.setattr(serve_load, 'run_load', run_load)
  output = tmp_path / 'serve.jsonl'
  bench_main(['serve', '--checkpoint', str(checkpoint_path), '--url', 'http://127.0.0.1:8080',
              '--concurrency', '1,2', '--input-size', '32x48', '--output', str(output)])
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert loads == [('127.0.0.1:8080', 1), ('127.0.0.1:8080', 2)]
  assert [(r['batching'], r['max_batch_size'], r['concurrency']) for r in rows] == [
      ('on (--url)', 4, 1), ('on (--url)', 4, 2)]
  assert serve_load.url_batching(1) == 'off (--url)'
  assert serve_load.url_batching(None) == 'unknown (--url)'
