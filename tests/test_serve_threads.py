"""``--threads N``: the served model computes on N threads, ONNX Runtime's and JAX's alike.

Counted, not timed: a server under load, and the threads of its process that ran at least a
quarter of the busiest one's CPU time (``serve_load.busy_threads``), which does not depend on
how busy this machine's cores are.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bisenet_jax import cli
from bisenet_jax.bench import serve_load
from bisenet_jax.data import sources
from bisenet_jax.export import DATASET_KEY, INTERFACE_KEY, Interface
from bisenet_jax.serve.process import ServerProcess
from bisenet_jax.specs import InferenceSpec

from conftest import ROOT

RED_STEP = 14


def write_convolution_model(path, channels=32, layers=3):
  """An ``.onnx`` exported-file look-alike whose labels are red // RED_STEP, after
  convolutions whose result is multiplied by 0 and added: work ONNX Runtime splits across its
  intra-op threads."""
  rng = np.random.default_rng(0)
  nodes = [helper.make_node('Cast', ['images'], ['pixels'], to=TensorProto.FLOAT),
           helper.make_node('Transpose', ['pixels'], ['x0'], perm=[0, 3, 1, 2])]
  initializers = [helper.make_tensor('axes', TensorProto.INT64, [1], [1]),
                  helper.make_tensor('zero', TensorProto.FLOAT, [], [0.0]),
                  helper.make_tensor('red_index', TensorProto.INT64, [], [0]),
                  helper.make_tensor('step', TensorProto.FLOAT, [], [RED_STEP])]
  inputs = 3
  for layer in range(layers):
    weights = rng.normal(0, 0.01, (channels, inputs, 3, 3)).astype(np.float32)
    initializers.append(numpy_helper.from_array(weights, f'w{layer}'))
    nodes.append(helper.make_node('Conv', [f'x{layer}', f'w{layer}'], [f'x{layer + 1}'],
                                  pads=[1, 1, 1, 1]))
    inputs = channels
  nodes += [helper.make_node('ReduceSum', [f'x{layers}', 'axes'], ['sum'], keepdims=0),
            helper.make_node('Mul', ['sum', 'zero'], ['nothing']),
            helper.make_node('Gather', ['pixels', 'red_index'], ['red'], axis=3),
            helper.make_node('Div', ['red', 'step'], ['quotient']),
            helper.make_node('Floor', ['quotient'], ['class_id']),
            helper.make_node('Add', ['class_id', 'nothing'], ['labels_float']),
            helper.make_node('Cast', ['labels_float'], ['labels'], to=TensorProto.UINT8)]
  graph = helper.make_graph(
      nodes, 'convolutions',
      [helper.make_tensor_value_info('images', TensorProto.UINT8, ['N', 'H', 'W', 3])],
      [helper.make_tensor_value_info('labels', TensorProto.UINT8, ['N', 'H', 'W'])],
      initializer=initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
  interface = Interface(None, None, 19, layout='nhwc', outputs='labels', preprocessing=True,
                        any_input_size=True)
  helper.set_model_props(model, {INTERFACE_KEY: interface.to_json(),
                                 DATASET_KEY: json.dumps(sources.CITYSCAPES.to_json())})
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return path


@pytest.fixture(scope='module')
def convolutions(tmp_path_factory):
  return write_convolution_model(tmp_path_factory.mktemp('threads') / 'convolutions.onnx')


def served_busy_threads(checkpoint, threads, size, *flags, requests=24):
  """The busy threads of a server with ``--threads`` under ``requests`` requests of ``size``
  images, two at a time. The images are large enough for the model's work to dwarf the
  server's own per request (a tenth of the busiest thread's time or less)."""
  images = np.random.default_rng(0).integers(0, 256, (4, *size, 3), np.uint8)
  with ServerProcess(checkpoint, '--threads', str(threads), *flags, cwd=ROOT,
                     timeout_s=600) as server:
    load = serve_load.LoadSpec(requests=2, concurrency=1, time_limit_s=120)
    assert serve_load.run_load(server.url, images, load)['ok'] == 2  # Warm.
    before = serve_load.thread_cpu_seconds(server.process.pid)
    load = serve_load.LoadSpec(requests=requests, concurrency=2, time_limit_s=300)
    assert serve_load.run_load(server.url, images, load)['ok'] == requests
    after = serve_load.thread_cpu_seconds(server.process.pid)
  return serve_load.busy_threads(before, after)


def test_busy_threads_are_those_near_the_busiest():
  before = {1: 0.0, 2: 1.0, 3: 5.0}
  assert serve_load.busy_threads(before, {1: 2.0, 2: 1.4, 3: 7.1, 4: 0.6}) == 3
  assert serve_load.busy_threads(before, {1: 2.0, 2: 1.1, 3: 5.0}) == 1


def test_the_threads_flag_reaches_onnx_runtime(convolutions):
  args = argparse.Namespace(checkpoint=str(convolutions), ema=None, dataset=None, classes=None,
                            threads=1, resize_to=(16, 16))
  segmenter = cli.load_segmenter(args, InferenceSpec(), root=None)
  options = segmenter.backend.exported.session.get_session_options()
  assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
  image = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), np.uint8)
  np.testing.assert_array_equal(segmenter.batch(image), image[..., 0] // RED_STEP)


@pytest.mark.parametrize('threads', [1, 2])
def test_an_onnx_server_computes_on_its_threads(convolutions, threads):
  assert served_busy_threads(convolutions, threads, (256, 256), '--max-batch-size', '1',
                             '--resize-to', '256x256') == threads


@pytest.fixture(scope='module')
def zero_fastscnn(tmp_path_factory):
  from test_bench_serve import save_zero_fastscnn  # Imports JAX: the slow tier's only.
  return save_zero_fastscnn(tmp_path_factory.mktemp('threads') / 'fastscnn')


@pytest.mark.slow  # Two JAX servers, each compiling Fast-SCNN (~20 s each on 2 cores).
@pytest.mark.parametrize('threads', [1, 2])
def test_a_jax_server_computes_on_its_threads(zero_fastscnn, threads):
  assert served_busy_threads(zero_fastscnn, threads, (512, 512), '--max-batch-size', '1',
                             '--warmup', '512x512', '--resize-to', '512x512',
                             requests=16) == threads


JAX_THREADS = textwrap.dedent('''
    import os
    import jax
    from bisenet_jax.errors import UserError
    from bisenet_jax.segmenter import JAX_THREADS_ENV, jax_threads
    jax_threads(3)
    assert os.environ[JAX_THREADS_ENV] == '3'
    jax.numpy.zeros(1).block_until_ready()  # JAX starts its CPU client.
    jax_threads(3)  # What it started with: nothing to do.
    try:
      jax_threads(2)
    except UserError as error:
      print(error)
''')


def test_jax_threads_are_set_before_jax_starts_or_refused():
  result = subprocess.run([sys.executable, '-c', JAX_THREADS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == ('JAX started in this process before threads=2 was asked for: '
                                   'load the model before anything else uses JAX, or start the '
                                   'process with PJRT_NPROC=2')
