// The vit-wgpu page: load a checkpoint, classify images on the page's WebGPU.
// Also the API scripts/web_infer.mjs drives (window.vitWeb): the same path the page's
// buttons take, so the headless test checks what a person clicking gets.
import init, { Classifier, verify } from './pkg/vit_wgpu.js';

const $ = (id) => document.getElementById(id);

let wasmReady = null;
// The current model; replaced only when a new one loads (a failed load keeps it).
let current = null;

function ensureWasm() {
  wasmReady ??= init();
  return wasmReady;
}

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

async function fetchBytes(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot fetch ${url}: ${message(e)}`);
  }
  if (!response.ok) {
    throw new Error(`cannot fetch ${url}: HTTP ${response.status} ${response.statusText}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

/** Model flags as `vit-wgpu infer` takes them: {heads, act, lnEps, imageSize, batch, classes}. */
async function loadModel(bytes, name, options = {}) {
  await ensureWasm();
  if (!navigator.gpu) {
    throw new Error('this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, ' +
      'Edge or Safari, or Firefox with WebGPU enabled, on a page served over https or from localhost');
  }
  const t0 = performance.now();
  const model = await Classifier.create(bytes, name, options);
  const previous = current;
  current = { model, name, config: JSON.parse(model.config), seconds: (performance.now() - t0) / 1000 };
  previous?.model.free();
  return current;
}

/** Classify encoded images: [{image, top: [{class, probability}]}] plus the time taken. */
async function classifyBytes(images, names, topK) {
  if (!current) throw new Error('no model loaded: pick or fetch a checkpoint first');
  const t0 = performance.now();
  const out = JSON.parse(await current.model.classify_encoded(images, names, topK));
  const seconds = (performance.now() - t0) / 1000;
  return { predictions: out, seconds };
}

window.vitWeb = {
  ready: ensureWasm,
  loadModel,
  async loadModelUrl(url, name, options) {
    return summary(await loadModel(await fetchBytes(url), name ?? url, options));
  },
  async classifyUrls(urls, names, topK) {
    const images = [];
    for (const url of urls) images.push(await fetchBytes(url));
    return classifyBytes(images, names ?? urls, topK);
  },
  classifyBytes,
  /** `vit-wgpu verify` on a parity fixture: the report as an object. */
  async verifyUrl(url, name) {
    await ensureWasm();
    return JSON.parse(await verify(await fetchBytes(url), name ?? url));
  },
  adapter: () => current?.model.adapter,
};

function summary(m) {
  return { name: m.name, config: m.config, seconds: m.seconds, adapter: m.model.adapter };
}

// ---------------------------------------------------------------- the page's controls

function status(text, kind = 'info') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

function describeModel() {
  const c = current.config;
  $('model-info').textContent =
    `${current.name}: ${c.image_h}x${c.image_w}x${c.channels}, patch ${c.patch}, width ${c.dim}, ` +
    `depth ${c.depth}, ${c.heads} heads, ${c.classes} classes, ` +
    `${(c.parameters / 1e6).toFixed(2)} M parameters (loaded in ${current.seconds.toFixed(2)} s)`;
  $('adapter').textContent = current.model.adapter;
}

function modelOptions() {
  const options = { batch: Number($('batch').value) || 8 };
  const heads = Number($('heads').value);
  if (heads) options.heads = heads;
  return options;
}

async function loadFromUi(getBytes, name) {
  status(`loading ${name} ...`);
  try {
    await loadModel(await getBytes(), name, modelOptions());
    describeModel();
    status(`loaded ${name}`, 'ok');
  } catch (e) {
    const kept = current ? ` (still using ${current.name})` : '';
    status(`${message(e)}${kept}`, 'error');
  }
}

async function classifyFiles(files) {
  const results = $('results');
  const images = [];
  const names = [];
  for (const f of files) {
    images.push(new Uint8Array(await f.arrayBuffer()));
    names.push(f.name);
  }
  if (images.length === 0) return;
  status(`classifying ${images.length} image(s) ...`);
  try {
    const { predictions, seconds } = await classifyBytes(images, names, 5);
    results.replaceChildren();
    predictions.forEach((p, i) => results.append(resultCard(files[i], p)));
    const rate = predictions.length / seconds;
    $('speed').textContent = `${predictions.length} image(s) in ${seconds.toFixed(3)} s: ` +
      `${rate.toFixed(1)} images/s`;
    status('done', 'ok');
  } catch (e) {
    status(message(e), 'error');
  }
}

function resultCard(file, prediction) {
  const card = document.createElement('div');
  card.className = 'card';
  const img = document.createElement('img');
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  const title = document.createElement('h3');
  title.textContent = prediction.image;
  const list = document.createElement('ol');
  for (const t of prediction.top) {
    const li = document.createElement('li');
    const pct = (100 * t.probability).toFixed(1);
    li.innerHTML = '<span class="name"></span><span class="bar"><span></span></span><span class="pct"></span>';
    li.querySelector('.name').textContent = t.class;
    li.querySelector('.bar span').style.width = `${pct}%`;
    li.querySelector('.pct').textContent = `${pct}%`;
    list.append(li);
  }
  card.append(img, title, list);
  return card;
}

function wireUi() {
  if (!$('checkpoint-file')) return;
  if (!navigator.gpu) {
    status('this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, Edge or ' +
      'Safari, or Firefox with WebGPU enabled, on a page served over https or from localhost', 'error');
  }
  $('checkpoint-file').addEventListener('change', (ev) => {
    const f = ev.target.files[0];
    if (f) loadFromUi(async () => new Uint8Array(await f.arrayBuffer()), f.name);
  });
  $('checkpoint-load').addEventListener('click', () => {
    const url = $('checkpoint-url').value.trim();
    if (url) loadFromUi(() => fetchBytes(url), url.split('/').pop() || url);
  });
  $('images').addEventListener('change', (ev) => classifyFiles([...ev.target.files]));
  const drop = $('drop');
  drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    drop.classList.remove('over');
    classifyFiles([...ev.dataTransfer.files]);
  });
  ensureWasm()
    .then(() => { if (navigator.gpu && !current) status('ready: load a checkpoint'); })
    .catch((e) => status(`cannot load the wasm package (run scripts/build_web.sh): ${message(e)}`, 'error'));
}

wireUi();
