// The vit-wgpu page: load a checkpoint, classify images on the page's WebGPU, draw each
// image's attention rollout over it.
// Also the API scripts/web_infer.mjs drives (window.vitWeb): the same path the page's
// buttons take, so the headless test checks what a person clicking gets.
import init, { Classifier, verify } from './pkg/vit_wgpu.js';

const $ = (id) => document.getElementById(id);

let wasmReady = null;
// The current model; replaced only when a new one loads (a failed load keeps it).
let current = null;

function ensureWasm() {
  // performance.now() when the wasm was compiled and instantiated (the cost of the page)
  wasmReady ??= init().then(() => { window.vitWeb.wasmReadyMs ??= performance.now(); });
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
  /** Attention rollout of one encoded image: {image, top, grid_h, grid_w, rollout}. */
  async rolloutBytes(bytes, name, topK = 5) {
    if (!current) throw new Error('no model loaded: pick or fetch a checkpoint first');
    return JSON.parse(await current.model.rollout(bytes, name, topK));
  },
  /** What the page shows now: per card its prediction and rollout (scripts/web_page.mjs). */
  shown: [],
  /** performance.now() (ms since navigation) when the first result was on the page. */
  firstResultMs: null,
  current: () => current,
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

/** Classify files (File or {name, data, url}) through the page: top-5 cards, images/s, then
 * each card's attention rollout drawn over its image. */
async function classifyFiles(files) {
  const results = $('results');
  const images = [];
  const names = [];
  for (const f of files) {
    images.push(f.data ?? new Uint8Array(await f.arrayBuffer()));
    names.push(f.name);
  }
  if (images.length === 0) return;
  status(`classifying ${images.length} image(s) ...`);
  try {
    const { predictions, seconds } = await classifyBytes(images, names, 5);
    results.replaceChildren();
    redraws.clear();
    window.vitWeb.shown = [];
    const cards = predictions.map((p, i) => {
      const card = resultCard(files[i], p);
      results.append(card.element);
      window.vitWeb.shown.push({ prediction: p, rollout: null });
      return card;
    });
    window.vitWeb.firstResultMs ??= performance.now();
    const rate = predictions.length / seconds;
    $('speed').textContent = `${predictions.length} image(s) in ${seconds.toFixed(3)} s: ` +
      `${rate.toFixed(1)} images/s (batch ${current.config.batch}, decoding included)`;
    status('attention rollout ...');
    const t0 = performance.now();
    const shownRollouts = Math.min(cards.length, MAX_ROLLOUTS);
    for (let i = 0; i < shownRollouts; i++) {
      const r = await window.vitWeb.rolloutBytes(images[i], names[i], 5);
      window.vitWeb.shown[i].rollout = r;
      await cards[i].drawRollout(r);
    }
    const more = cards.length > shownRollouts ? ` (the first ${shownRollouts})` : '';
    status(`done; attention rollout${more} in ${((performance.now() - t0) / 1000).toFixed(2)} s`, 'ok');
  } catch (e) {
    status(message(e), 'error');
  }
}

// Each rollout is one more forward plus the attention maps: enough for a screenful.
const MAX_ROLLOUTS = 16;
const VIEW = 224;

/** Jet colour map, as `vit-wgpu infer --attention` draws it (blue low, red high). */
function jet(v) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

/** The part of the image the model sees (the eval transform's center crop, if any). */
function sourceRect(img, config) {
  const [w, h] = [img.naturalWidth, img.naturalHeight];
  if (!config.crop_pct) return [0, 0, w, h];
  // resize the shorter side to size / crop_pct, then crop the center size x size
  const scale = Math.min(w / (config.image_w / config.crop_pct), h / (config.image_h / config.crop_pct));
  const [cw, ch] = [config.image_w * scale, config.image_h * scale];
  return [(w - cw) / 2, (h - ch) / 2, cw, ch];
}

function resultCard(file, prediction) {
  const card = document.createElement('div');
  card.className = 'card';
  const config = current.config;
  const canvas = document.createElement('canvas');
  const aspect = config.image_w / config.image_h;
  canvas.width = aspect >= 1 ? VIEW : Math.round(VIEW * aspect);
  canvas.height = aspect >= 1 ? Math.round(VIEW / aspect) : VIEW;
  canvas.title = 'click: attention rollout on or off';
  const img = new Image();
  const url = file.url ?? URL.createObjectURL(file.data ? new Blob([file.data]) : file);
  const loaded = new Promise((ok) => { img.onload = ok; img.onerror = ok; });
  img.src = url;
  let heat = null;
  let overlay = true;
  const draw = () => {
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, canvas.width, canvas.height);
    // small images (28x28) stay sharp; the heat map is bilinear over the patch grid
    g.imageSmoothingEnabled = img.naturalWidth >= canvas.width;
    if (img.naturalWidth) g.drawImage(img, ...sourceRect(img, config), 0, 0, canvas.width, canvas.height);
    if (heat && overlay && $('show-rollout').checked) {
      g.imageSmoothingEnabled = true;
      g.globalAlpha = 0.55;
      g.drawImage(heat, 0, 0, canvas.width, canvas.height);
      g.globalAlpha = 1;
    }
  };
  loaded.then(draw);
  canvas.addEventListener('click', () => { overlay = !overlay; draw(); });
  redraws.add(draw);
  const title = document.createElement('h3');
  title.textContent = prediction.image;
  const list = document.createElement('ol');
  for (const t of prediction.top) {
    const li = document.createElement('li');
    const pct = (100 * t.probability).toFixed(1);
    li.innerHTML = '<span class="name"></span><span class="bar"><span></span></span><span class="pct"></span>';
    li.querySelector('.name').textContent = t.class;
    li.querySelector('.name').title = t.class;
    li.querySelector('.bar span').style.width = `${pct}%`;
    li.querySelector('.pct').textContent = `${pct}%`;
    list.append(li);
  }
  card.append(canvas, title, list);
  return {
    element: card,
    async drawRollout(r) {
      const lo = Math.min(...r.rollout);
      const hi = Math.max(...r.rollout);
      heat = document.createElement('canvas');
      heat.width = r.grid_w;
      heat.height = r.grid_h;
      const g = heat.getContext('2d');
      const data = g.createImageData(r.grid_w, r.grid_h);
      r.rollout.forEach((v, i) => {
        const [red, green, blue] = jet(hi > lo ? (v - lo) / (hi - lo) : 0.5);
        data.data.set([red, green, blue, 255], 4 * i);
      });
      g.putImageData(data, 0, 0);
      card.classList.add('has-rollout');
      await loaded;
      draw();
    },
  };
}

// The draw functions of the cards on the page (the overlay checkbox redraws them all).
const redraws = new Set();

/** `?checkpoint=URL&image=URL...[&heads=N&batch=B]`: load and classify on opening (a link
 * that shows a result; scripts/web_page.mjs times page load to first result with it). */
async function fromQuery() {
  const q = new URLSearchParams(location.search);
  const checkpoint = q.get('checkpoint');
  if (!checkpoint) return;
  if (q.get('heads')) $('heads').value = q.get('heads');
  if (q.get('batch')) $('batch').value = q.get('batch');
  const name = checkpoint.split('/').pop() || checkpoint;
  $('checkpoint-url').value = checkpoint;
  await loadFromUi(() => fetchBytes(checkpoint), name);
  if (!current) return;
  const files = [];
  for (const url of q.getAll('image')) {
    try {
      files.push({ name: url.split('/').pop() || url, url, data: await fetchBytes(url) });
    } catch (e) {
      status(message(e), 'error');
      return;
    }
  }
  await classifyFiles(files);
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
  $('show-rollout').addEventListener('change', () => redraws.forEach((d) => d()));
  ensureWasm()
    .then(() => { if (navigator.gpu && !current) status('ready: load a checkpoint'); })
    .then(fromQuery)
    .catch((e) => status(`cannot load the wasm package (run scripts/build_web.sh): ${message(e)}`, 'error'));
}

wireUi();
