"""The official ImageNet backbone files: the configs name them by default, and a training start
finds them in the cache folder or downloads them there (checked, atomically), or says in one
line what to do offline.

Downloads come from a local HTTP server on 127.0.0.1 (the machine has no internet); the
registry's official address of the R18 file is pointed at it, with a file name that carries
the served bytes' real SHA-256 prefix, as the official names do.
"""

import dataclasses
import hashlib
import http.server
import importlib.util
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from bisenet_jax.errors import UserError
from bisenet_jax.interop import pretrained
from bisenet_jax.specs import NETWORKS
from bisenet_jax.specs.model import imagenet_files
from bisenet_jax.train import config as config_lib
from conftest import ROOT, free_port

R18_V1C = 'resnet18_v1c-b5776b93.pth'
R50_V1C = 'resnet50_v1c-2cccc1ad.pth'


def load_config(name: str, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / 'configs' / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


# --- The defaults -------------------------------------------------------------------------------

def test_the_registry_has_the_references_addresses():
  """sssegmentation's DEFAULT_MODEL_URLS: resnetXXconv3x3stem (deep) and resnetXX (classic)."""
  assert imagenet_files() == {
      R18_V1C: f'https://download.openmmlab.com/pretrain/third_party/{R18_V1C}',
      R50_V1C: f'https://download.openmmlab.com/pretrain/third_party/{R50_V1C}',
      'resnet18-5c106cde.pth': 'https://download.pytorch.org/models/resnet18-5c106cde.pth',
      'resnet50-19c8e357.pth': 'https://download.pytorch.org/models/resnet50-19c8e357.pth'}
  for name, entry in NETWORKS.items():
    assert bool(entry.imagenet_urls) == (entry.imagenet_backbone is not None), name
    assert set(entry.imagenet_urls) == set(entry.stems), name
  assert {pretrained.expected_hash(name) for name in imagenet_files()} == {
      'b5776b93', '2cccc1ad', '5c106cde', '19c8e357'}


@pytest.mark.parametrize('name, variant, expected', [
    ('r18.py', None, R18_V1C), ('r50.py', None, R50_V1C),
    ('custom.py', None, R18_V1C), ('voc.py', None, R18_V1C), ('ade20k.py', None, R18_V1C),
    ('r18.py', 'demo', 'none'), ('r50.py', 'demo', 'none'), ('custom.py', 'garden', 'none'),
    ('bisenetv2.py', None, 'none'), ('bisenetv2.py', 'demo', 'none'),
    ('fastscnn.py', None, 'none'), ('fastscnn.py', 'demo', 'none'),
])
def test_configs_name_the_official_file_and_demos_train_from_scratch(name, variant, expected):
  assert load_config(name, variant).init.backbone == expected


def test_the_default_follows_the_network_and_stem_until_set():
  config = load_config('voc.py')
  config.model.name = 'bisenetv1_r50'
  assert config.init.backbone == R50_V1C
  config.model.stem = 'classic'  # The reference's 7x7-stem type downloads torchvision's file.
  assert config.init.backbone == 'resnet50-19c8e357.pth'
  config.model.name = 'bisenetv2'
  config.model.stem = None
  assert config.init.backbone == 'none'
  config.init.backbone = '/my/resnet.pth'  # Set: it no longer follows.
  config.model.name = 'bisenetv1_r18'
  assert config.init.backbone == '/my/resnet.pth'


def synthetic_config(tmp_path, config=None, **init):
  config = config or config_lib.get_config('bisenetv1_r18')
  config.data.source = 'synthetic'
  config.data.root = str(tmp_path / 'data')
  config.init.update(init)
  return config


def test_train_spec_reads_init_backbone(tmp_path):
  spec = config_lib.train_spec(synthetic_config(tmp_path))
  assert spec.init_backbone == R18_V1C
  for value in ('none', '', 'None'):
    assert config_lib.train_spec(synthetic_config(tmp_path, backbone=value)).init_backbone == ''
  v2 = synthetic_config(tmp_path, load_config('bisenetv2.py'))
  assert config_lib.train_spec(v2).init_backbone == ''
  v2.init.backbone = R18_V1C
  with pytest.raises(UserError, match='bisenetv2 has no ImageNet backbone.*backbone=none'):
    config_lib.train_spec(v2)
  with pytest.raises(UserError, match=f'another network or stem: .* starts from {R18_V1C}'):
    config_lib.train_spec(synthetic_config(tmp_path, backbone=R50_V1C))
  with pytest.raises(UserError) as error:
    config_lib.train_spec(synthetic_config(tmp_path, backbone='resnet18.pth'))
  message = str(error.value)
  assert '\n' not in message and 'neither a file nor an official ImageNet file name' in message
  assert all(name in message for name in imagenet_files()) and "'none'" in message


def test_fine_tuning_needs_no_backbone_file_unless_one_is_set(tmp_path):
  """The checkpoint holds the whole model: the default file is neither needed nor fetched."""
  spec = config_lib.train_spec(synthetic_config(tmp_path, checkpoint=str(tmp_path / 'ckpt')))
  assert (spec.init_checkpoint, spec.init_backbone) == (str(tmp_path / 'ckpt'), '')
  (tmp_path / 'mine.pth').write_bytes(b'')
  with pytest.raises(UserError, match='Set only one of config.init.checkpoint and '
                     'config.init.backbone'):
    config_lib.train_spec(synthetic_config(tmp_path, checkpoint=str(tmp_path / 'ckpt'),
                                           backbone=str(tmp_path / 'mine.pth')))


# --- Fetching ----------------------------------------------------------------------------------

class FileServer:
  """Serves ``files`` ({name: bytes}) on 127.0.0.1 and counts the requests; a name in
  ``truncate`` is announced whole but cut off halfway, the connection then closed."""

  def __init__(self):
    self.files, self.truncate, self.requests = {}, set(), []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        name = self.path.lstrip('/')
        server.requests.append(name)
        if name not in server.files:
          self.send_error(404)
          return
        body = server.files[name]
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if name in server.truncate else body)
        self.close_connection = True

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def url(self, name: str) -> str:
    return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture(scope='module')
def r18_file():
  """An ImageNet-style R18 v1c file (random weights) and its name with its real hash prefix."""
  import torch
  import torch_support
  buffer = io.BytesIO()
  torch.save({'state_dict': torch_support.imagenet_state_dict(18, 'deep')}, buffer)
  content = buffer.getvalue()
  return f'resnet18_v1c-{hashlib.sha256(content).hexdigest()[:8]}.pth', content


@pytest.fixture
def server():
  server = FileServer()
  yield server
  server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache' / 'imagenet'


def official_r18_at(monkeypatch, url: str) -> str:
  """Makes ``url`` the official address of R18's deep-stem file; returns the file's name."""
  entry = NETWORKS['bisenetv1_r18']
  monkeypatch.setitem(NETWORKS, 'bisenetv1_r18', dataclasses.replace(
      entry, imagenet_urls={**entry.imagenet_urls, 'deep': url}))
  return url.rsplit('/', 1)[-1]


def left_in(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_fresh_download_lands_in_the_cache_and_a_training_start_loads_it(
    tmp_path, cache, server, r18_file, monkeypatch, capsys):
  from bisenet_jax import models
  from bisenet_jax.train.initialization import initial_variables
  # The random initialisation, which the file then overwrites, as shapes: 20-30 s less on a CPU.
  monkeypatch.setattr(models, 'init_variables', lambda model, rng: models.abstract_variables(model))
  name, content = r18_file
  server.files[name] = content
  official_r18_at(monkeypatch, server.url(name))
  config = synthetic_config(tmp_path)
  assert config.init.backbone == name  # The default config, nothing set.
  spec = config_lib.train_spec(config)
  variables = initial_variables(spec, models.build(spec.model))
  assert server.requests == [name]
  assert (cache / name).read_bytes() == content and left_in(cache) == [name]
  output = capsys.readouterr()
  assert f'{cache / name}: loaded 110 ImageNet backbone tensors' in output.out + output.err
  assert f'downloaded {server.url(name)} to {cache / name}' in output.err
  import torch
  from bisenet_jax.interop import imagenet
  state = torch.load(io.BytesIO(content))['state_dict']
  resnet = imagenet.backbone_subtree(variables, imagenet.backbone_path(spec.model))
  np.testing.assert_array_equal(resnet['params']['layer1.0']['bn1']['scale'],
                                state['layer1.0.bn1.weight'].numpy())


def test_a_cached_file_is_used_without_a_request(cache, server, r18_file, monkeypatch):
  name, content = r18_file
  name = official_r18_at(monkeypatch, server.url(name))
  cache.mkdir(parents=True)
  (cache / name).write_bytes(content)
  assert pretrained.resolve(name) == cache / name
  assert server.requests == []


def test_an_existing_path_is_used_as_it_is(tmp_path, cache, server, r18_file, monkeypatch):
  name, content = r18_file
  official_r18_at(monkeypatch, server.url(name))
  (tmp_path / name).write_bytes(content)
  monkeypatch.chdir(tmp_path)
  assert pretrained.resolve(name) == Path(name)  # A file of that name here wins.
  assert pretrained.resolve('none') is None and pretrained.resolve('') is None
  assert server.requests == [] and not cache.exists()


def test_a_wrong_file_is_refused_and_nothing_is_kept(cache, server, r18_file, monkeypatch):
  name, content = r18_file
  server.files[name] = content + b'tampered'
  official_r18_at(monkeypatch, server.url(name))
  with pytest.raises(UserError) as error:
    pretrained.resolve(name, progress=False)
  message = str(error.value)
  assert '\n' not in message and f'not the {name[13:21]}... its name carries' in message
  assert 'nothing was kept' in message and left_in(cache) == []


def test_a_transfer_cut_off_midway_leaves_nothing_behind(cache, server, r18_file, monkeypatch):
  name, content = r18_file
  server.files[name] = content
  server.truncate.add(name)
  official_r18_at(monkeypatch, server.url(name))
  with pytest.raises(UserError) as error:
    pretrained.resolve(name, progress=False)
  message = str(error.value)
  assert '\n' not in message and f'stopped after {len(content) // 2} of {len(content)}' in message
  assert left_in(cache) == []


def test_offline_says_where_to_put_the_file_or_how_to_train_from_scratch(
    cache, r18_file, monkeypatch):
  name, _ = r18_file
  url = f'http://127.0.0.1:{free_port()}/{name}'  # Nothing listens there: refused.
  official_r18_at(monkeypatch, url)
  with pytest.raises(UserError) as error:
    pretrained.resolve(name, progress=False)
  message = str(error.value)
  assert '\n' not in message and message.startswith(f'cannot download {name} from {url}')
  assert f'put the file at {cache / name} (fetch it from {url}' in message
  assert '--config.init.backbone=none' in message and left_in(cache) == []


def test_a_missing_file_on_the_server_is_one_line(cache, server, r18_file, monkeypatch):
  name, _ = r18_file
  official_r18_at(monkeypatch, server.url(name))
  with pytest.raises(UserError) as error:
    pretrained.resolve(name, progress=False)
  assert '\n' not in str(error.value) and '(HTTP Error 404: Not Found)' in str(error.value)
  assert left_in(cache) == []


def test_a_cached_file_that_is_not_the_official_one_is_refused(cache, r18_file, monkeypatch):
  name, content = r18_file
  official_r18_at(monkeypatch, f'http://127.0.0.1:{free_port()}/{name}')
  cache.mkdir(parents=True)
  (cache / name).write_bytes(content[:-1])
  with pytest.raises(UserError, match=f'{cache / name} is not the official file.*delete it'):
    pretrained.resolve(name)


def test_concurrent_downloads_give_one_whole_file(cache, server, r18_file, monkeypatch):
  """Several processes of one run fetching at once: unique temporary names, atomic renames."""
  name, content = r18_file
  server.files[name] = content
  name = official_r18_at(monkeypatch, server.url(name))
  errors = []

  def fetch():
    try:
      pretrained.download(server.url(name), cache / name, progress=False)
    except Exception as e:  # noqa: BLE001 - reported below.
      errors.append(e)
  threads = [threading.Thread(target=fetch) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == [] and len(server.requests) == 4
  assert (cache / name).read_bytes() == content and left_in(cache) == [name]
