// The page of `python -m bisenet_jax.serve`: segments a picked or dropped image, or the camera's
// frames, through the server's Open Inference Protocol (REST, binary tensor data extension) on
// its own origin, and shows the labels over the image in the classes' colours.
//
// For tests, window.bisenetPage is the last result: {source: 'file'|'camera', width, height,
// frames, serverMs, roundTripMs, labelsBase64, frameBase64 (camera only: the RGB bytes sent)}.
'use strict';

const HEADER_LENGTH = 'Inference-Header-Content-Length';
const FPS_WINDOW_MS = 3000; // frames/s is what the last 3 seconds sustained
const IGNORE_LABEL = 255; // shown white, as the palette PNGs of `predict` show it

const page = {
  model: null, // {name, classes, colours: Uint8Array [256 * 3]}
  shown: null, // {rgb, labels, width, height}: what the canvas draws
  camera: null, // {stream, frames, answerTimes}
  // Each new source (a file, the camera, stop) starts a new generation; an answer to an older
  // one is dropped, so a slow answer never overwrites a newer picture.
  generation: 0,
};

const element = (id) => document.getElementById(id);
// The sources: disabled until the model's description has loaded.
const controls = () => document.querySelectorAll('#file, #camera-start');

// --- the protocol --------------------------------------------------------------------------

// The server's one-line reason ({"error": ...}) for a failed request, or what came instead.
function failure(status, bytes) {
  const text = new TextDecoder().decode(bytes);
  try {
    const reason = JSON.parse(text).error;
    if (typeof reason === 'string') return new Error(reason);
  } catch (notJson) {
    // Not the server's JSON error (a proxy's page, say): show what came.
  }
  return new Error(`HTTP ${status}: ${text.slice(0, 200) || 'no reason given'}`);
}

async function getJson(path) {
  const response = await fetch(path);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (!response.ok) throw failure(response.status, bytes);
  return JSON.parse(new TextDecoder().decode(bytes));
}

// One image's labels. `input` is the tensor's {name, datatype, shape}, `data` its binary data;
// the labels come back as binary data too (uint8 [1, H, W]).
async function infer(input, data) {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{...input, parameters: {binary_data_size: data.length}}],
    outputs: [{name: 'labels', parameters: {binary_data: true}}],
  }));
  const started = performance.now();
  const response = await fetch(`/v2/models/${encodeURIComponent(page.model.name)}/infer`, {
    method: 'POST',
    headers: {'Content-Type': 'application/octet-stream', [HEADER_LENGTH]: String(header.length)},
    body: new Blob([header, data]),
  });
  const body = new Uint8Array(await response.arrayBuffer());
  const roundTripMs = performance.now() - started;
  if (!response.ok) throw failure(response.status, body);
  return {...labelsOf(response, body), roundTripMs};
}

// The labels output of a binary response: its JSON header, then each binary output's bytes in
// the order the header lists them.
function labelsOf(response, body) {
  const jsonLength = Number(response.headers.get(HEADER_LENGTH));
  if (!jsonLength) throw new Error(`the server sent no ${HEADER_LENGTH}: no binary labels`);
  const answer = JSON.parse(new TextDecoder().decode(body.subarray(0, jsonLength)));
  let offset = jsonLength;
  for (const output of answer.outputs) {
    const size = output.parameters?.binary_data_size;
    if (size === undefined) continue;
    if (output.name === 'labels') {
      const [, height, width] = output.shape;
      if (size !== height * width) throw new Error(`labels of shape ${output.shape}: ${size} bytes`);
      return {labels: body.slice(offset, offset + size), width, height,
              serverMs: answer.parameters?.server_ms};
    }
    offset += size;
  }
  throw new Error('the server sent no binary labels output');
}

// A BYTES tensor of one element: its 4-byte little-endian length, then the bytes.
function bytesElement(bytes) {
  const data = new Uint8Array(4 + bytes.length);
  new DataView(data.buffer).setUint32(0, bytes.length, true);
  data.set(bytes, 4);
  return data;
}

// --- pixels ----------------------------------------------------------------------------------

function rgbOf(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

// Each class's colour at its id (256 entries: every uint8 label has one).
function colourTable(palette) {
  const colours = new Uint8Array(256 * 3);
  palette.forEach((colour, id) => colours.set(colour, id * 3));
  colours.fill(255, IGNORE_LABEL * 3);
  return colours;
}

// 0.5 * a + 0.5 * b rounded half to even: exactly what masks.blend (cv2.addWeighted) gives.
function half(sum) {
  return (sum + ((sum >> 1) & 1)) >> 1;
}

// The RGBA pixels the canvas shows: 'overlay' (the image and its mask 50/50), 'mask' or 'image'.
function picture(shown, colours, mode) {
  const {rgb, labels} = shown;
  const rgba = new Uint8ClampedArray(labels.length * 4);
  for (let p = 0; p < labels.length; p++) {
    const c = labels[p] * 3;
    for (let k = 0; k < 3; k++) {
      const image = rgb[p * 3 + k];
      const mask = colours[c + k];
      rgba[p * 4 + k] = mode === 'image' ? image : mode === 'mask' ? mask : half(image + mask);
    }
    rgba[p * 4 + 3] = 255;
  }
  return new ImageData(rgba, shown.width, shown.height);
}

function base64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// --- what the page shows ---------------------------------------------------------------------

function showError(error) {
  const box = element('error');
  box.textContent = error.message || String(error);
  box.hidden = false;
}

function clearError() {
  element('error').hidden = true;
  element('error').textContent = '';
}

function draw() {
  if (!page.shown) return;
  const canvas = element('canvas');
  const mode = document.querySelector('input[name=show]:checked').value;
  canvas.width = page.shown.width;
  canvas.height = page.shown.height;
  canvas.getContext('2d').putImageData(picture(page.shown, page.model.colours, mode), 0, 0);
  element('hint').hidden = true;
}

function number(value) {
  return Number.isFinite(value) ? value.toFixed(1) : '–';
}

// Shows one answer and publishes it as window.bisenetPage (its base64 fields computed only when
// read, so the camera does not pay for them on every frame).
function show(source, rgb, answer, frames, fps) {
  page.shown = {rgb, labels: answer.labels, width: answer.width, height: answer.height};
  draw();
  element('fps').textContent = number(fps);
  element('server-ms').textContent = number(answer.serverMs);
  element('round-trip-ms').textContent = number(answer.roundTripMs);
  element('size').textContent = `${answer.width}×${answer.height}`;
  const result = {source, width: answer.width, height: answer.height, frames,
                  serverMs: answer.serverMs, roundTripMs: answer.roundTripMs};
  Object.defineProperty(result, 'labelsBase64', {enumerable: true, get: () => base64(answer.labels)});
  if (source === 'camera') {
    Object.defineProperty(result, 'frameBase64', {enumerable: true, get: () => base64(rgb)});
  }
  window.bisenetPage = result;
}

function showModel(name, metadata) {
  const {classes, palette, network, backend} = metadata.parameters;
  page.model = {name, colours: colourTable(palette)};
  element('model').textContent = `${name}: ${network} on ${backend}, ${classes.length} classes`;
  for (const control of controls()) control.disabled = false;
  const legend = element('legend');
  legend.replaceChildren(...classes.map((className, id) => {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.backgroundColor = `rgb(${palette[id].join(',')})`;
    item.append(swatch, `${id} ${className}`);
    return item;
  }));
}

// --- sources ---------------------------------------------------------------------------------

// The file's pixels as the server decodes them: EXIF orientation applied, colour profile
// ignored (as OpenCV does).
async function decodeFile(file) {
  const bitmap = await createImageBitmap(file, {
    imageOrientation: 'from-image', colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  return {rgb: rgbOf(context.getImageData(0, 0, bitmap.width, bitmap.height).data),
          width: bitmap.width, height: bitmap.height};
}

async function segmentFile(file) {
  stopCamera();
  const generation = ++page.generation;
  clearError();
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    // The server decodes first: a file it refuses shows its reason, not the browser's.
    const answer = await infer({name: 'image_bytes', datatype: 'BYTES', shape: [1]},
                               bytesElement(bytes));
    const image = await decodeFile(file);
    if (image.width !== answer.width || image.height !== answer.height) {
      throw new Error(`${file.name}: the browser decoded ${image.width}×${image.height} pixels, ` +
                      `the server ${answer.width}×${answer.height}`);
    }
    if (generation === page.generation) show('file', image.rgb, answer, 1, NaN);
  } catch (error) {
    if (generation === page.generation) showError(error);
  }
}

// Resolves when the video has presented a frame not yet taken (at once if it already has).
function newFrame(camera) {
  if (camera.presented > camera.taken) return Promise.resolve();
  return new Promise((resolve) => { camera.waiting = resolve; });
}

function watchFrames(video, camera) {
  video.requestVideoFrameCallback((now, metadata) => {
    camera.presented = metadata.presentedFrames;
    camera.waiting?.();
    camera.waiting = null;
    if (page.camera === camera) watchFrames(video, camera);
  });
}

async function startCamera() {
  stopCamera();
  const generation = ++page.generation;
  clearError();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
    if (generation !== page.generation) {
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    const camera = {stream, frames: 0, answerTimes: [], presented: 0, taken: 0, waiting: null};
    page.camera = camera;
    const video = element('video');
    video.srcObject = stream;
    watchFrames(video, camera);
    await video.play();
    element('camera-start').disabled = true;
    element('camera-stop').disabled = false;
    await segmentCamera(video, camera, generation);
  } catch (error) {
    if (generation === page.generation) {
      stopCamera();
      showError(error);
    }
  }
}

// Frames one at a time: the next is taken once the answer to the last has arrived (and the
// camera has a new one), so requests never pile up behind a slow server.
async function segmentCamera(video, camera, generation) {
  const grab = document.createElement('canvas');
  const context = grab.getContext('2d', {willReadFrequently: true});
  while (generation === page.generation) {
    await newFrame(camera);
    if (generation !== page.generation) return;
    camera.taken = camera.presented;
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (grab.width !== width || grab.height !== height) {
      grab.width = width;
      grab.height = height;
    }
    context.drawImage(video, 0, 0);
    const rgb = rgbOf(context.getImageData(0, 0, width, height).data);
    const answer = await infer({name: 'image', datatype: 'UINT8', shape: [1, height, width, 3]},
                               rgb);
    if (generation !== page.generation) return;
    camera.frames += 1;
    show('camera', rgb, answer, camera.frames, framesPerSecond(camera.answerTimes));
  }
}

// Frames per second over the last FPS_WINDOW_MS, counting this answer.
function framesPerSecond(times) {
  const now = performance.now();
  times.push(now);
  while (now - times[0] > FPS_WINDOW_MS) times.shift();
  return times.length > 1 ? ((times.length - 1) * 1000) / (now - times[0]) : NaN;
}

function stopCamera() {
  if (!page.camera) return;
  page.generation += 1;
  page.camera.stream.getTracks().forEach((track) => track.stop());
  page.camera.waiting?.();
  page.camera = null;
  element('video').srcObject = null;
  element('camera-start').disabled = false;
  element('camera-stop').disabled = true;
}

// --- wiring ----------------------------------------------------------------------------------

function wire() {
  element('file').addEventListener('change', (event) => {
    const [file] = event.target.files;
    if (file) segmentFile(file);
    event.target.value = ''; // picking the same file again segments it again
  });
  element('camera-start').addEventListener('click', startCamera);
  element('camera-stop').addEventListener('click', stopCamera);
  for (const radio of document.querySelectorAll('input[name=show]')) {
    radio.addEventListener('change', draw);
  }
  // Dropping anywhere on the page segments the file (and never navigates away to it).
  const drop = element('drop');
  document.addEventListener('dragover', (event) => {
    event.preventDefault();
    drop.classList.add('dragging');
  });
  document.addEventListener('dragleave', () => drop.classList.remove('dragging'));
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('dragging');
    const [file] = event.dataTransfer.files;
    if (file) segmentFile(file);
  });
}

async function start() {
  wire();
  window.bisenetPage = null;
  try {
    const {models} = await getJson('/v2/models');
    const name = models[0];
    showModel(name, await getJson(`/v2/models/${encodeURIComponent(name)}`));
  } catch (error) {
    element('model').textContent = 'no model';
    showError(error);
  }
}

start();
