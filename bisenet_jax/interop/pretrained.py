"""The official ImageNet backbone files: found in the cache folder, or downloaded once.

``config.init.backbone`` is ``'none'`` (or ``''``: the backbone starts from scratch), the path
of an existing ``.pth`` file, or the name of an official file (``specs.model.imagenet_files``,
e.g. ``resnet18_v1c-b5776b93.pth``). A name is looked up in the cache folder,
``~/.cache/bisenet_jax/imagenet/`` (``$BISENET_JAX_CACHE/imagenet/`` when that variable is set),
and otherwise downloaded there from its official address. The download is streamed, checked
against the SHA-256 prefix its name carries (OpenMMLab and torchvision names end in
``-<first 8 hex digits of the file's SHA-256>.pth``) and renamed into place only when whole and
right: several processes may download at once, and a failure leaves nothing behind.

No JAX here: ``train.config`` checks values with it, ``train.initialization`` fetches.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from bisenet_jax.errors import UserError
from bisenet_jax.specs.model import imagenet_files

CACHE_ENV = 'BISENET_JAX_CACHE'
DEFAULT_CACHE = '~/.cache/bisenet_jax'
FROM_SCRATCH = ('', 'none')
TIMEOUT_S = 60  # Per blocking network operation (connect, each read), not for the whole file.
CHUNK = 1 << 20
PROGRESS_FROM = 8 << 20  # Files this large (bytes) show a progress bar.
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')


def cache_root() -> Path:
  """The project's cache folder: ``$BISENET_JAX_CACHE``, else ``~/.cache/bisenet_jax``."""
  return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_dir() -> Path:
  """Where official ImageNet files are kept: ``$BISENET_JAX_CACHE/imagenet`` or
  ``~/.cache/bisenet_jax/imagenet``."""
  return cache_root() / 'imagenet'


def from_scratch(value: str | None) -> bool:
  """Whether ``config.init.backbone`` asks for no ImageNet file ('none' or '')."""
  return (value or '').strip().lower() in FROM_SCRATCH


def expected_hash(name: str) -> str | None:
  """The SHA-256 prefix a file name carries (``resnet18_v1c-b5776b93.pth``: ``b5776b93``)."""
  match = _HASH_IN_NAME.search(name)
  return match.group(1) if match else None


def accepted() -> str:
  """What ``config.init.backbone`` takes, for error messages."""
  names = ', '.join(imagenet_files())
  return (f'an existing .pth file, an official ImageNet file name ({names}; downloaded once '
          f"into {cache_dir()}), or 'none' to train the backbone from scratch")


def check(value: str) -> None:
  """A one-line error unless ``value`` is 'none'/'', an existing file or an official name.

  Touches no network: ``train.config.train_spec`` calls it before anything starts.
  """
  if from_scratch(value) or Path(value).expanduser().is_file() or value in imagenet_files():
    return
  raise UserError(f'config.init.backbone={value!r} is neither a file nor an official ImageNet '
                  f'file name: give {accepted()}.')


def resolve(value: str, progress: bool = True) -> Path | None:
  """The file ``config.init.backbone`` names, downloaded first if it must be; None for 'none'.

  Args:
    value: 'none' or '', a path, or an official file name.
    progress: say on stderr what is downloaded (with a progress bar if the file is large).

  Raises:
    UserError: an unknown name, a download that failed or was wrong (one line each, saying
      where to put the file by hand, or how to train from scratch on purpose).
  """
  if from_scratch(value):
    return None
  path = Path(value).expanduser()
  if path.is_file():
    return path
  files = imagenet_files()
  if value not in files:
    check(value)
  target = cache_dir() / value
  if target.is_file():
    _check_cached(target, files[value])
    return target
  download(files[value], target, progress=progress)
  return target


def _remedy(target: Path, url: str) -> str:
  return (f'put the file at {target} (fetch it from {url} on a machine that is online), or '
          'train the backbone from scratch on purpose with --config.init.backbone=none')


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(CHUNK), b''):
      digest.update(block)
  return digest.hexdigest()


def _check_cached(target: Path, url: str) -> None:
  """A cached file must still be the one its name promises (it may have been put by hand)."""
  prefix = expected_hash(target.name)
  if prefix is None:
    return
  digest = _sha256(target)
  if not digest.startswith(prefix):
    raise UserError(f'{target} is not the official file: its SHA-256 starts {digest[:8]}, its '
                    f'name promises {prefix}; delete it to download it again from {url}, or '
                    'train the backbone from scratch on purpose with --config.init.backbone=none.')


def download(url: str, target: Path, progress: bool = True, timeout: float = TIMEOUT_S) -> None:
  """Streams ``url`` into ``target``, checked against the hash ``target``'s name carries.

  The bytes go to a uniquely named temporary file beside ``target``, renamed over it only once
  whole and right; on any failure (network, wrong hash, interruption) it is removed.
  """
  prefix = expected_hash(target.name)
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f'.{target.name}.',
                                         suffix='.part', delete=False)
  except OSError as e:
    raise UserError(f'cannot write into {target.parent} ({e.strerror or e}): set {CACHE_ENV} to '
                    f'a writable folder, or {_remedy(target, url)}.') from e
  temporary = Path(handle.name)
  try:
    digest = hashlib.sha256()
    with handle:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          total = int(response.headers.get('Content-Length') or 0) or None
          with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
                    desc=f'downloading {target.name}', leave=False,
                    disable=not progress or (total or 0) < PROGRESS_FROM) as bar:
            received = 0
            for block in iter(lambda: response.read(CHUNK), b''):
              handle.write(block)
              digest.update(block)
              received += len(block)
              bar.update(len(block))
      except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets.
        http_error = isinstance(e, urllib.error.HTTPError)  # 'HTTP Error 404: Not Found'
        reason = e if http_error else getattr(e, 'reason', None) or e
        raise UserError(f'cannot download {target.name} from {url} ({reason}): '
                        f'{_remedy(target, url)}.') from e
      if total is not None and received != total:
        raise UserError(f'the download of {target.name} from {url} stopped after {received} of '
                        f'{total} bytes; nothing was kept: run again, or {_remedy(target, url)}.')
    if prefix is not None and not digest.hexdigest().startswith(prefix):
      raise UserError(f'the download of {target.name} from {url} has SHA-256 '
                      f'{digest.hexdigest()[:8]}..., not the {prefix}... its name carries; '
                      f'nothing was kept: run again, or {_remedy(target, url)}.')
    os.replace(temporary, target)
  finally:
    temporary.unlink(missing_ok=True)
  if progress:
    print(f'downloaded {url} to {target}', file=sys.stderr)
