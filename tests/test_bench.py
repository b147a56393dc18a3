"""The benchmark harness: every field on 8 simulated devices, FLOPs vs the analytic count, MFU."""

import json

import cv2
import pytest

from bisenet_jax.bench import data_side, flops, jax_side
from bisenet_jax.bench.__main__ import main as bench_main
from conftest import cpu_devices, launch_processes, run_cli, wait_for

INFER_FIELDS = {'impl', 'mode', 'arch', 'dtype', 'precision', 'devices', 'batch_per_device',
                'resolution', 'compile_s', 'step_ms_median', 'step_ms_p90', 'img_per_s',
                'img_per_s_per_device', 'scaling_efficiency', 'gflops_per_image_xla',
                'gflops_per_image_analytic', 'peak_tflops_per_device', 'mfu',
                'program_memory_gib', 'process_peak_memory_gib', 'compiled_temp_gib',
                'device_kind', 'jax', 'backend', 'warmup', 'steps'}
DATA_FIELDS = {'data_img_per_s', 'data_img_per_s_per_core', 'data_cores_per_device',
               'data_wait_fraction'}
TRAIN_FIELDS = INFER_FIELDS | DATA_FIELDS


@pytest.mark.slow
@pytest.mark.parametrize('mode,fields', [('infer', INFER_FIELDS), ('train', TRAIN_FIELDS)])
def test_harness_on_eight_simulated_devices_writes_every_field(tmp_path, mode, fields):
  result = run_cli('-m', 'bisenet_jax.bench', mode, '--input-size', '64x64', '--devices', '1,8',
                   '--batch-per-device', '2', '--warmup', '1', '--steps', '1',
                   '--data-frames', str(tmp_path / 'frames'),
                   '--output', str(tmp_path / 'r.jsonl'), '--plot', str(tmp_path / 'r.png'),
                   env=cpu_devices(8))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
  assert [r['devices'] for r in rows] == [1, 8]
  for row in rows:
    assert fields <= set(row), fields - set(row)
    assert row['img_per_s'] > 0 and row['step_ms_p90'] >= row['step_ms_median'] > 0
    assert row['mfu'] is None  # A CPU has no datasheet peak: 'n/a', never a guess.
    assert row['program_memory_gib'] > row['compiled_temp_gib'] > 0
    if mode == 'train':  # Real 2048x1024 PNG files were read, at some rate per CPU core.
      assert row['data_img_per_s'] > 0 and row['data_img_per_s_per_core'] > 0
      assert row['data_cores_per_device'] == pytest.approx(
          row['img_per_s_per_device'] / row['data_img_per_s_per_core'])
  if mode == 'train':
    frames = sorted((tmp_path / 'frames').rglob('*_leftImg8bit.png'))
    assert frames and cv2.imread(str(frames[0])).shape == (1024, 2048, 3)
  assert rows[0]['scaling_efficiency'] == 1.0
  assert (tmp_path / 'r.png').read_bytes()[:4] == b'\x89PNG'
  assert 'img/s/dev' in result.stdout and 'n/a' in result.stdout


@pytest.mark.slow
def test_two_processes_measure_one_sweep_and_process_zero_reports(tmp_path):
  """``bench`` launched as two processes (README's generic launch): one mesh over both."""
  args = ['-m', 'bisenet_jax.bench', 'infer', '--input-size', '64x64', '--devices', '2,4',
          '--warmup', '1', '--steps', '1', '--output', str(tmp_path / 'r.jsonl')]
  processes = launch_processes(args, 2, 2, tmp_path)
  outputs = wait_for(processes)
  assert [p.returncode for p in processes] == [0, 0], outputs
  rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
  assert [r['devices'] for r in rows] == [2, 4]  # Written once, by process 0.
  assert 'img/s/dev' in outputs[0] and 'img/s/dev' not in outputs[1]


@pytest.mark.slow  # A compile of R18's inference: 30 s.
def test_xla_flops_per_image_match_the_analytic_conv_count():
  point = jax_side.Point('infer', 'bisenetv1_r18', 1, 1, (128, 256), 'float32')
  row = jax_side.measure_infer(point, warmup=0, steps=1)
  # The analytic count is docs/reference.md §7.3's (256.7 GFLOPs at 1024x2048, i.e. 4.01
  # here); XLA leaves out the kernel taps that fall on padding: 7% at this size.
  assert row['gflops_per_image_analytic'] == pytest.approx(256.7085 / 64, rel=1e-4)
  assert row['gflops_per_image_xla'] == pytest.approx(row['gflops_per_image_analytic'], rel=0.1)


@pytest.mark.slow  # A compile of R18's inference and its FLOP count.
def test_one_point_prints_the_table_and_writes_its_row(tmp_path, capsys):
  bench_main(['infer', '--input-size', '64x96', '--devices', '1', '--warmup', '0', '--steps', '1',
              '--output', str(tmp_path / 'r.jsonl')])
  out = capsys.readouterr().out
  rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
  assert [(r['impl'], r['resolution'], r['devices']) for r in rows] == [('jax', '64x96', 1)]
  assert INFER_FIELDS <= set(rows[0]) and rows[0]['img_per_s'] > 0
  assert 'img/s/dev' in out and '64x96' in out and 'appended 1 rows' in out


def test_data_mode_measures_each_recipe_pipeline_from_png_and_records(tmp_path, capsys,
                                                                       monkeypatch):
  """Small frames stand in for Cityscapes' (the recipes' crops then pad them)."""
  monkeypatch.setitem(data_side.FRAMES, 'height', 64)
  monkeypatch.setitem(data_side.FRAMES, 'width', 128)
  monkeypatch.setitem(data_side.FRAMES, 'num_train', 3)
  bench_main(['data', '--arch', 'bisenetv1_r18,fastscnn', '--steps', '1', '--data-threads', '1',
              '--data-frames', str(tmp_path / 'frames'), '--output', str(tmp_path / 'd.jsonl')])
  out = capsys.readouterr().out
  rows = [json.loads(line) for line in (tmp_path / 'd.jsonl').read_text().splitlines()]
  assert [(r['arch'], r['read'], r['batch'], r['crop'], r['threads']) for r in rows] == [
      ('bisenetv1_r18', 'records', 16, '1024x1024', 1), ('bisenetv1_r18', 'png', 16, '1024x1024', 1),
      ('fastscnn', 'records', 32, '512x1024', 1), ('fastscnn', 'png', 32, '512x1024', 1)]
  assert all(r['data_img_per_s'] > 0 and r['data_img_per_s_per_core'] > 0 for r in rows)
  assert list((tmp_path / 'frames' / 'records').glob('cityscapes_train-*/index.json'))
  assert 'img/s/core' in out and 'appended 4 rows' in out


def test_old_resolution_flag_is_refused_with_the_new_one(capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_main(['infer', '--resolution', '1024x2048'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert error == 'error: --resolution is gone: use --input-size HEIGHTxWIDTH\n'


def test_peak_table_knows_datasheet_devices_only():
  assert flops.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4
  assert flops.peak_tflops('TPU v5 lite', 'bfloat16') == 197.0
  assert flops.peak_tflops('cpu', 'float32') is None
  assert flops.peak_tflops('TPU v4', 'float32') is None  # No fp32 datasheet figure.
  assert flops.peak_tflops('cpu', 'float32', override=0.17) == 0.17
  # A float32 model's peak is that of the arithmetic its precision runs.
  assert flops.peak_tflops('NVIDIA H100 80GB HBM3', 'float32') == 66.9  # 'highest': FP32.
  assert flops.peak_tflops('NVIDIA H100 80GB HBM3', 'float32', 'default') == 494.7  # TF32.
  assert flops.peak_tflops('NVIDIA H200', 'float32', 'tensorfloat32') == 494.7
  assert flops.peak_tflops('TPU v4', 'float32', 'default') == 275.0  # One bfloat16 pass.
  assert flops.peak_tflops('Tesla V100-SXM2-16GB', 'float32', 'tensorfloat32') == 15.7


@pytest.mark.slow
def test_compare_torch_measures_each_workload_once_and_prints_ratios(tmp_path):
  result = run_cli('-m', 'bisenet_jax.bench', 'infer', '--input-size', '64x128', '--devices', '1',
                   '--dtype', 'float32,bfloat16', '--compare-torch', '--torch-variants',
                   'eager,bf16', '--warmup', '1', '--steps', '2', '--threads', '1',
                   '--output', str(tmp_path / 'r.jsonl'))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
  # Rows are written as they are measured: JAX fp32, then the two PyTorch variants, JAX bf16.
  assert [(r['impl'], r['dtype']) for r in rows] == [
      ('jax', 'float32'), ('torch-eager', 'float32'), ('torch-bf16', 'bfloat16'),
      ('jax', 'bfloat16')]
  jax_fp32, torch_eager = rows[:2]
  assert torch_eager['img_per_s'] > 0 and torch_eager['threads'] == 1
  assert torch_eager['jax_speedup'] == pytest.approx(jax_fp32['img_per_s']
                                                     / torch_eager['img_per_s'])
  ratio_lines = [line for line in result.stdout.splitlines() if line.startswith('JAX/PyTorch')]
  assert len(ratio_lines) == 2 and all('vs eager fp32' in line for line in ratio_lines)


@pytest.mark.slow
def test_compare_onnx_times_onnx_runtime_on_the_same_threads(tmp_path):
  result = run_cli('-m', 'bisenet_jax.bench', 'infer', '--input-size', '64x128', '--devices', '1',
                   '--compare-onnx', '--warmup', '1', '--steps', '2', '--threads', '1',
                   '--output', str(tmp_path / 'r.jsonl'))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
  assert [r['impl'] for r in rows] == ['jax', 'onnxruntime']
  jax_row, onnx_row = rows
  assert onnx_row['img_per_s'] > 0 and onnx_row['threads'] == 1
  assert onnx_row['jax_speedup'] == pytest.approx(jax_row['img_per_s'] / onnx_row['img_per_s'])
  assert any(line.startswith('JAX float32/ONNX Runtime float32 infer bisenetv1_r18 1x64x128: ')
             for line in result.stdout.splitlines())
