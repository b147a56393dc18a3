"""Tests of ``python -m bisenet_jax.export --format triton-repository``.

The configuration is read back with Triton's own protobuf schema (``inference.ModelConfig``,
shipped by tritonclient), so a field Triton does not know fails here, not in a Triton log.
"""

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from bisenet_jax.errors import UserError
from bisenet_jax.export import Interface, onnx_runtime, triton
from bisenet_jax.export.__main__ import main as export_main

NUM_CLASSES = 5


def parse(text: str):
  """The config as Triton reads it (unknown fields and bad enum values raise)."""
  return text_format.Parse(text, model_config_pb2.ModelConfig())


def expected_dims(shape: tuple) -> list[int]:
  """An ``Interface`` shape without its batch: symbolic sizes are -1."""
  return [dim if isinstance(dim, int) else -1 for dim in shape[1:]]


@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
@pytest.mark.parametrize('outputs,preprocessing', [('logits', False), ('labels', True)])
def test_config_declares_the_files_tensors_and_batching(layout, outputs, preprocessing):
  interface = Interface(None, None, NUM_CLASSES, layout, outputs, preprocessing,
                        any_input_size=True)
  spec = triton.TritonSpec('street', max_batch_size=4, max_queue_delay_ms=2.5)
  config = parse(triton.config_text(interface, spec))
  assert (config.name, config.platform, config.max_batch_size) == ('street', 'onnxruntime_onnx', 4)
  [image], [output] = config.input, config.output
  assert image.name == 'images'
  assert image.data_type == (model_config_pb2.TYPE_UINT8 if preprocessing else
                             model_config_pb2.TYPE_FP32)
  assert list(image.dims) == expected_dims(interface.input_shape())
  assert output.name == outputs
  assert output.data_type == (model_config_pb2.TYPE_UINT8 if outputs == 'labels' else
                              model_config_pb2.TYPE_FP32)
  assert list(output.dims) == expected_dims(interface.output_shape())
  assert config.dynamic_batching.max_queue_delay_microseconds == 2500
  [group] = config.instance_group
  assert (group.count, group.kind) == (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)


def test_gpu_instances():
  interface = Interface(None, None, NUM_CLASSES, any_input_size=True)
  config = parse(triton.config_text(interface, triton.TritonSpec(instance_kind='gpu')))
  assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


INTERFACE = Interface(None, None, 3, 'nhwc', 'labels', True, any_input_size=True)


def test_repository_layout_and_replacement(tmp_path):
  spec = triton.TritonSpec('m')
  folder = triton.write_repository(tmp_path / 'repo', spec, b'first', INTERFACE, ('a', 'b', 'c'))
  assert folder == tmp_path / 'repo' / 'm'
  assert (folder / '1' / 'model.onnx').read_bytes() == b'first'
  assert (folder / 'labels.txt').read_text() == 'a\nb\nc\n'
  parse((folder / 'config.pbtxt').read_text())
  with pytest.raises(UserError, match='--force'):
    triton.write_repository(tmp_path / 'repo', spec, b'second', INTERFACE)
  triton.write_repository(tmp_path / 'repo', spec, b'second', INTERFACE, replace=True)
  assert (folder / '1' / 'model.onnx').read_bytes() == b'second'
  assert not (folder / 'labels.txt').exists()  # Nothing of the replaced model stays.
  assert sorted(p.name for p in (tmp_path / 'repo').iterdir()) == ['m']


def test_a_failed_write_leaves_the_repository_as_it_was(tmp_path, monkeypatch):
  spec = triton.TritonSpec('m')
  triton.write_repository(tmp_path, spec, b'old', INTERFACE)

  def fail(path, text):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(Path, 'write_text', fail)
  for replace, folder in ((True, 'm'), (False, 'other')):
    with pytest.raises(UserError, match='No space left'):
      triton.write_repository(tmp_path, triton.TritonSpec(folder), b'new', INTERFACE,
                              replace=replace)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['m']  # No temporary, no 'other'.
  assert (tmp_path / 'm' / '1' / 'model.onnx').read_bytes() == b'old'


@pytest.mark.parametrize('flags,message', [
    (['--format', 'onnx', '--triton-instance-kind', 'gpu'], '--triton-instance-kind is for'),
    (['--format', 'triton-repository', '--triton-instance-kind', 'tpu'], "'tpu' is not one of"),
    (['--format', 'triton-repository', '--triton-model-name', '../up'], 'letters, digits'),
    (['--format', 'triton-repository', '--triton-max-batch-delay-ms', '-1'], '0..60000'),
    (['--format', 'stablehlo', '--dtype', 'int8'], 'onnx or triton-repository'),
])
def test_bad_flags_are_refused_before_the_checkpoint_is_read(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    export_main(['--checkpoint', str(tmp_path / 'missing'), '--output', str(tmp_path / 'repo'),
                 *flags])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_an_existing_model_folder_or_a_file_as_repository_is_refused(tmp_path, capsys):
  (tmp_path / 'repo' / 'bisenet').mkdir(parents=True)
  (tmp_path / 'file').write_text('')
  for output, message in ((tmp_path / 'repo', 'already exists: pass --force'),
                          (tmp_path / 'file', 'is a file: give the model repository folder')):
    with pytest.raises(SystemExit):
      export_main(['--checkpoint', str(tmp_path / 'missing'), '--output', str(output),
                   '--format', 'triton-repository'])
    assert message in capsys.readouterr().err


@pytest.mark.slow  # Two exports of a network (~30 s on 2 cores).
def test_the_repository_holds_the_same_file_as_the_onnx_export(tmp_path, capsys):
  import jax

  from bisenet_jax import checkpoint, models
  from bisenet_jax.data import sources
  from bisenet_jax.specs import ModelSpec
  spec = ModelSpec('fastscnn', 19)
  checkpoint.save_model(tmp_path / 'ckpt', models.init_variables(models.build(spec),
                                                                 jax.random.key(0)),
                        spec, sources.CITYSCAPES)
  flags = ['--checkpoint', str(tmp_path / 'ckpt'), '--outputs', 'labels', '--with-preprocessing',
           '--layout', 'nhwc']
  export_main([*flags, '--format', 'onnx', '--output', str(tmp_path / 'plain.onnx')])
  export_main([*flags, '--format', 'triton-repository', '--output', str(tmp_path / 'repo'),
               '--triton-instance-kind', 'gpu', '--triton-max-batch-size', '2'])
  assert 'KIND_GPU), labels.txt' in capsys.readouterr().out
  folder = tmp_path / 'repo' / 'bisenet'
  model = folder / '1' / 'model.onnx'
  assert model.read_bytes() == (tmp_path / 'plain.onnx').read_bytes()
  exported = onnx_runtime.OnnxModel(model)
  config = parse((folder / 'config.pbtxt').read_text())
  assert config.max_batch_size == 2
  assert list(config.input[0].dims) == expected_dims(exported.interface.input_shape())
  assert list(config.output[0].dims) == expected_dims(exported.interface.output_shape())
  # What Triton will feed it: a batch at the config's batch size, at a size of the client's.
  images = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), np.uint8)
  assert exported.run(images).shape == (2, 40, 56)
  assert (folder / 'labels.txt').read_text().splitlines() == list(
      sources.CITYSCAPES.classes.names)
