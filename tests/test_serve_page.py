"""The server's page (GET /) in a real browser: the system's Chromium, driven by selenium.

One server (``python -m bisenet_jax.serve``) and one headless Chromium, whose fake camera plays a
synthetic street clip, serve the whole module. The model is the ONNX file that labels each pixel
by its red value (``test_evaluate.write_red_channel_model``): instant to serve, and its labels
follow every edge of a scene. The page's labels are compared with the same model's
``Segmenter`` on the same pixels, its canvas with ``masks.blend``. Screenshots are written under
pytest's tmp dir, and to ``$BISENET_SCREENSHOTS`` when it is set.
"""

import base64
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bisenet_jax import Segmenter
from bisenet_jax.data import masks
from bisenet_jax.data.synthetic import draw_street_scene
from bisenet_jax.data.synthetic.__main__ import main as synthetic_main

from conftest import ROOT, free_port
from test_evaluate import write_red_channel_model

CHROMIUM = Path('/usr/bin/chromium')
CHROMEDRIVER = Path('/usr/bin/chromedriver')
pytestmark = [
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason='needs Debian\'s chromium and chromium-driver '
                       '(apt-get install chromium chromium-driver)'),
    # One pytest-xdist worker starts this module's server and browser once (--dist loadgroup).
    pytest.mark.xdist_group('serve_page'),
]

CLIP_SIZE = (96, 128)  # The fake camera's frames (height, width).
IMAGE_SIZE = (75, 101)  # The picked image: odd sides, not the camera's size.
SERVER_START_S = 120
WAIT_S = 30


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return tmp_path_factory.mktemp('serve_page')


@pytest.fixture(scope='module')
def model(folder):
  return write_red_channel_model(folder / 'red.onnx')


@pytest.fixture(scope='module')
def server(model, folder):
  """The ready server's base URL; its log is ``folder / 'server.log'``."""
  port = free_port()
  with (folder / 'server.log').open('w') as log:
    process = subprocess.Popen(
        [sys.executable, '-m', 'bisenet_jax.serve', '--checkpoint', str(model),
         '--host', '127.0.0.1', '--port', str(port), '--grpc-port', str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
  try:
    wait_until_serving(process, folder / 'server.log')
    yield f'http://127.0.0.1:{port}'
  finally:
    process.terminate()
    try:
      process.wait(10)
    except subprocess.TimeoutExpired:
      process.kill()


def wait_until_serving(process, log_path):
  """Waits for the one line the server prints when it is ready (its stdout is drained by a
  thread from then on, so it can never block on a full pipe)."""
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put('')],
                   daemon=True).start()
  deadline = time.monotonic() + SERVER_START_S
  while True:
    try:
      line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
      line = ''
    if line.startswith('serving '):
      return
    if not line:
      raise AssertionError(f'the server did not print its serving line:\n{log_path.read_text()}')


@pytest.fixture(scope='module')
def segmenter(model):
  return Segmenter.load(model)


@pytest.fixture(scope='module')
def clip(folder):
  path = folder / 'clip.y4m'
  synthetic_main(['--video', str(path), '--size', f'{CLIP_SIZE[0]}x{CLIP_SIZE[1]}',
                  '--frames', '10'])
  return path


@pytest.fixture(scope='module')
def browser(clip, folder):
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = str(CHROMIUM)
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic',
               '--no-first-run', '--disable-background-networking', '--disable-component-update',
               '--disable-sync', f'--user-data-dir={folder / "chromium"}',
               '--window-size=1200,860', '--use-fake-ui-for-media-stream',
               '--use-fake-device-for-media-stream', f'--use-file-for-fake-video-capture={clip}'):
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
  yield driver
  driver.quit()


def open_page(browser, server):
  """Loads the page and waits until the model's description is shown (the sources enabled)."""
  from selenium.webdriver.support.ui import WebDriverWait
  browser.get(server + '/')
  WebDriverWait(browser, WAIT_S).until(
      lambda driver: driver.find_element('id', 'file').is_enabled()
      or driver.find_element('id', 'error').text)
  assert browser.find_element('id', 'error').text == ''
  return browser


def wait_for_result(browser, condition='true'):
  """window.bisenetPage once it exists and ``condition`` (JavaScript, on ``result``) holds."""
  from selenium.webdriver.support.ui import WebDriverWait
  return WebDriverWait(browser, WAIT_S).until(lambda driver: driver.execute_script(
      f'const result = window.bisenetPage; return result && ({condition}) ? result : null;')
      or fail_on_error(driver))


def fail_on_error(browser):
  error = browser.find_element('id', 'error').text
  assert not error, f'the page shows an error: {error}'
  return None


def decode(text, shape):
  return np.frombuffer(base64.b64decode(text), np.uint8).reshape(shape)


def canvas_pixels(browser):
  """The canvas's RGB pixels (its PNG is lossless; every pixel is opaque)."""
  url = browser.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
  with Image.open(io.BytesIO(base64.b64decode(url.split(',', 1)[1]))) as png:
    rgba = np.asarray(png.convert('RGBA'))
  assert (rgba[..., 3] == 255).all()
  return rgba[..., :3]


def save_screenshot(browser, folder, name):
  path = folder / name
  assert browser.save_screenshot(str(path))
  if os.environ.get('BISENET_SCREENSHOTS'):
    copy = Path(os.environ['BISENET_SCREENSHOTS'])
    copy.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, copy / name)
  return path


def test_a_picked_image_shows_the_models_labels_over_it(server, segmenter, browser, folder):
  image = draw_street_scene(np.random.default_rng(5), *IMAGE_SIZE)[0]
  path = folder / 'street.png'
  Image.fromarray(image).save(path)
  open_page(browser, server)
  legend = [item.text for item in browser.find_elements('css selector', '#legend li')]
  assert legend == [f'{key} {name}' for key, name in enumerate(segmenter.classes.names)]

  browser.find_element('id', 'file').send_keys(str(path))
  result = wait_for_result(browser, "result.source === 'file'")
  assert (result['width'], result['height'], result['frames']) == (IMAGE_SIZE[1], IMAGE_SIZE[0], 1)
  labels = decode(result['labelsBase64'], IMAGE_SIZE)
  expected = segmenter(path)
  assert len(np.unique(expected)) > 1  # A mask of one class would hide misplaced pixels.
  np.testing.assert_array_equal(labels, expected)
  overlay = masks.blend(image, segmenter.colorize(expected))
  np.testing.assert_allclose(canvas_pixels(browser), overlay, atol=1, rtol=0)
  save_screenshot(browser, folder, 'page_image.png')

  browser.find_element('css selector', 'input[name=show][value=mask]').click()
  np.testing.assert_array_equal(canvas_pixels(browser), segmenter.colorize(expected))
  browser.find_element('css selector', 'input[name=show][value=image]').click()
  np.testing.assert_array_equal(canvas_pixels(browser), image)
  # Nothing came from anywhere but the server (the page works with no network).
  assert all(url.startswith(server + '/') for url in browser.execute_script(
      "return performance.getEntriesByType('resource').map((entry) => entry.name)"))


# Watches the page's requests: how many are in flight at once, and the last refused one.
_WATCH_FETCH = """
  const fetch = window.fetch;
  window.watched = {now: 0, most: 0, refused: null};
  window.fetch = async (...args) => {
    window.watched.most = Math.max(window.watched.most, ++window.watched.now);
    try {
      const response = await fetch(...args);
      if (!response.ok) {
        window.watched.refused = {status: response.status, body: await response.clone().text()};
      }
      return response;
    } finally {
      window.watched.now -= 1;
    }
  };
"""


def test_the_camera_segments_one_frame_at_a_time(server, segmenter, browser, folder):
  open_page(browser, server)
  browser.execute_script(_WATCH_FETCH)
  browser.find_element('id', 'camera-start').click()
  wait_for_result(browser, "result.source === 'camera' && result.frames >= 3")
  browser.find_element('id', 'camera-stop').click()
  result = browser.execute_script('return window.bisenetPage')
  assert (result['height'], result['width']) == CLIP_SIZE
  frame = decode(result['frameBase64'], (*CLIP_SIZE, 3))
  np.testing.assert_array_equal(decode(result['labelsBase64'], CLIP_SIZE), segmenter(frame))
  np.testing.assert_allclose(canvas_pixels(browser), segmenter.overlay(frame), atol=1, rtol=0)
  assert browser.execute_script('return window.watched.most') == 1
  for key in ('fps', 'server-ms', 'round-trip-ms'):
    assert float(browser.find_element('id', key).text) > 0, key
  assert result['roundTripMs'] >= result['serverMs'] > 0
  save_screenshot(browser, folder, 'page_camera.png')


# A file dropped on the page, as a drag from the desktop delivers it.
_DROP = """
  const [name, data] = arguments;
  const bytes = Uint8Array.from(atob(data), (char) => char.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: 'image/png'}));
  document.getElementById('drop').dispatchEvent(
      new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
"""


def drop(browser, name, data: bytes):
  browser.execute_script(_DROP, name, base64.b64encode(data).decode())


def test_a_file_the_server_refuses_shows_its_reason_until_an_image_is_dropped(
    server, segmenter, browser, folder):
  open_page(browser, server)
  browser.execute_script(_WATCH_FETCH)
  drop(browser, 'notes.png', b'not an image')
  from selenium.webdriver.support.ui import WebDriverWait
  shown = WebDriverWait(browser, WAIT_S).until(
      lambda driver: driver.find_element('id', 'error').text)
  refused = browser.execute_script('return window.watched.refused')
  assert refused['status'] == 400
  assert shown == json.loads(refused['body'])['error']
  assert browser.execute_script('return window.bisenetPage') is None
  save_screenshot(browser, folder, 'page_error.png')

  image = draw_street_scene(np.random.default_rng(6), *CLIP_SIZE)[0]
  png = io.BytesIO()
  Image.fromarray(image).save(png, format='PNG')
  drop(browser, 'street.png', png.getvalue())
  result = wait_for_result(browser, "result.source === 'file'")
  assert not browser.find_element('id', 'error').is_displayed()
  np.testing.assert_array_equal(decode(result['labelsBase64'], CLIP_SIZE), segmenter(image))
  save_screenshot(browser, folder, 'page_dropped.png')
