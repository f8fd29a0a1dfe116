// The Train tab: a ViT trained on Fashion-MNIST on the page's WebGPU, with the native
// trainer's batches, initialisation, schedule and optimiser (the wasm TrainingSession).
// Also the API scripts/web_train.mjs drives (window.vitTrain): the same session the buttons
// make, so the headless test checks what a person clicking gets.
import init, { TrainingSession } from './pkg/vit_wgpu.js';

const $ = (id) => document.getElementById(id);

// The four files, in the order TrainingSession.create takes them.
const FILES = [
  { key: 'train-images', name: 'train-images-idx3-ubyte.gz' },
  { key: 'train-labels', name: 'train-labels-idx1-ubyte.gz' },
  { key: 't10k-images', name: 't10k-images-idx3-ubyte.gz' },
  { key: 't10k-labels', name: 't10k-labels-idx1-ubyte.gz' },
];
// Steps per call into wasm: few enough that the page repaints and Pause answers quickly.
const STEPS_PER_CALL = 4;
const NO_WEBGPU = 'this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, ' +
  'Edge or Safari, or Firefox with WebGPU enabled, on a page served over https or from localhost';

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

// One wasm instance for the page: app.js's when it is there.
function ensureWasm() {
  return window.vitWeb?.ready ? window.vitWeb.ready() : init();
}

async function fetchBytes(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot fetch ${url}: ${message(e)}`);
  }
  if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * A run: the wasm session, the results that came back and the clock. `options` as
 * TrainingSession.create takes them, plus `maxSteps` (stop there instead of at the end of
 * the last epoch).
 */
class Run {
  constructor(session, options) {
    // The session's getters are read here once: wasm refuses any call into the session
    // while one of its methods (a step, an evaluation) is still running.
    this.session = session;
    this.options = options;
    this.config = JSON.parse(session.config);
    this.adapter = session.adapter;
    this.batchSize = session.batchSize;
    this.stepsPerEpoch = session.stepsPerEpoch;
    this.target = Math.min(options.maxSteps ?? Infinity, session.totalSteps);
    this.steps = 0; // optimiser steps submitted
    this.results = []; // {step, loss, accuracy}
    this.evals = []; // {step, accuracy, loss, images}
    this.running = false;
    this.seconds = 0; // training time, pauses excluded
  }

  get done() {
    return this.steps >= this.target;
  }

  get imagesPerSecond() {
    return this.seconds > 0 ? (this.results.length * this.batchSize) / this.seconds : 0;
  }

  /** Steps until `target` or a pause; `onResults` sees every batch of results. */
  async train(onResults) {
    this.running = true;
    try {
      while (this.running && !this.done) {
        const t0 = performance.now();
        const n = Math.min(STEPS_PER_CALL, this.target - this.steps);
        const got = JSON.parse(await this.session.step(n));
        this.steps += n;
        this.seconds += (performance.now() - t0) / 1000;
        this.results.push(...got);
        onResults?.(got);
        // Let the page paint and the buttons answer between calls.
        await new Promise((ok) => setTimeout(ok, 0));
      }
      const t0 = performance.now();
      const rest = JSON.parse(await this.session.flush());
      this.seconds += (performance.now() - t0) / 1000;
      this.results.push(...rest);
      onResults?.(rest);
    } finally {
      this.running = false;
    }
  }

  async evaluate() {
    const r = JSON.parse(await this.session.eval());
    this.evals.push(r);
    return r;
  }

  async checkpoint() {
    return this.session.exportCheckpoint();
  }

  free() {
    this.running = false;
    this.session.free();
  }
}

let current = null;

/** A new run from the four files' bytes (train images, train labels, test images, labels). */
async function createRun(files, names, options = {}) {
  await ensureWasm();
  if (!navigator.gpu) throw new Error(NO_WEBGPU);
  const session = await TrainingSession.create(files, names, options);
  current?.free();
  current = new Run(session, options);
  return current;
}

window.vitTrain = {
  createRun,
  async createRunFromUrls(urls, names, options) {
    const files = [];
    for (const url of urls) files.push(await fetchBytes(url));
    return createRun(files, names ?? FILES.map((f) => f.name), options);
  },
  /**
   * The headless test's whole run: `steps` steps, then every loss, the test-set result and
   * the checkpoint (base64).
   */
  async trainUrls(urls, names, options, steps) {
    const run = await this.createRunFromUrls(urls, names, { ...options, maxSteps: steps });
    await run.train();
    const evaluation = await run.evaluate();
    const bytes = await run.checkpoint();
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return {
      config: run.config, results: run.results, evaluation, seconds: run.seconds,
      imagesPerSecond: run.imagesPerSecond, adapter: run.adapter, checkpoint: btoa(binary),
    };
  },
  get current() { return current; },
};

// ---------------------------------------------------------------- the tab's controls

let chosen = null; // {files: [4 Uint8Array], names: [4 names]}

function status(text, kind = 'info') {
  const el = $('train-status');
  el.textContent = text;
  el.className = kind;
}

/** Which of the four files a name is (by its stem, as the CLI finds them), or -1. */
function fileIndex(name) {
  const n = name.toLowerCase().replace('.idx', '-idx');
  return FILES.findIndex((f) => n.startsWith(`${f.key}-idx`));
}

async function chooseFiles(list) {
  const picked = [null, null, null, null];
  const unknown = [];
  for (const f of list) {
    const i = fileIndex(f.name);
    if (i < 0) unknown.push(f.name);
    else picked[i] = f;
  }
  const missing = FILES.filter((_, i) => !picked[i]).map((f) => f.name);
  if (missing.length) {
    const extra = unknown.length ? ` (not Fashion-MNIST idx names: ${unknown.join(', ')})` : '';
    status(`missing ${missing.join(', ')}: pick all four files at once${extra}`, 'error');
    return;
  }
  const files = await Promise.all(picked.map(async (f) => new Uint8Array(await f.arrayBuffer())));
  setChosen(files, picked.map((f) => f.name));
}

async function fetchFolder() {
  const folder = $('train-folder').value.trim().replace(/\/+$/, '') || '.';
  status(`fetching the four files from ${folder}/ ...`);
  try {
    const urls = FILES.map((f) => `${folder}/${f.name}`);
    const files = [];
    for (const url of urls) files.push(await fetchBytes(url));
    setChosen(files, urls);
  } catch (e) {
    status(`${message(e)}: put the four Fashion-MNIST files there, or pick them`, 'error');
  }
}

function setChosen(files, names) {
  chosen = { files, names };
  const mb = files.reduce((s, f) => s + f.length, 0) / 1e6;
  $('train-data').textContent = `${names.join(', ')} (${mb.toFixed(1)} MB)`;
  $('train-start').disabled = false;
  status('ready: press Start');
}

function numberInput(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

function uiOptions() {
  return {
    preset: $('train-preset').value,
    batchSize: numberInput('train-batch'),
    epochs: numberInput('train-epochs'),
    lr: numberInput('train-lr'),
    seed: numberInput('train-seed'),
    maxSteps: numberInput('train-max-steps'),
    limitEval: numberInput('train-eval-images'),
    augment: $('train-augment').checked,
  };
}

function buttons() {
  const run = current;
  const busy = run?.running || evaluating;
  $('train-start').disabled = !chosen || busy;
  $('train-pause').disabled = !run || run.done || evaluating;
  $('train-pause').textContent = run && !run.running && !run.done ? 'Resume' : 'Pause';
  $('train-eval').disabled = !run || busy;
  $('train-download').disabled = !run || busy || run.steps === 0;
}

let evaluating = false;

async function start() {
  if (!chosen) return;
  if (current?.running) return;
  status('parsing the files and building the model ...');
  try {
    const run = await createRun(chosen.files, chosen.names, uiOptions());
    const c = run.config;
    $('train-adapter').textContent = run.adapter;
    status(`${c.model}; ${(c.parameters / 1e6).toFixed(2)} M parameters, ${c.train_images} training ` +
      `and ${c.test_images} test images; ${run.target} steps of ${run.batchSize}`);
    draw();
    await trainUi(run);
  } catch (e) {
    status(message(e), 'error');
  }
  buttons();
}

async function trainUi(run) {
  const tick = () => { stats(run); draw(); buttons(); };
  const p = run.train(tick);
  buttons();
  try {
    await p;
  } catch (e) {
    status(message(e), 'error');
    buttons();
    return;
  }
  tick();
  if (run !== current) return;
  if (run.done) await evaluateUi(run);
  else status(`paused at step ${run.steps}`);
}

async function evaluateUi(run) {
  evaluating = true;
  buttons();
  status(`evaluating on ${run.config.test_images} test images ...`);
  try {
    const t0 = performance.now();
    const r = await run.evaluate();
    const s = (performance.now() - t0) / 1000;
    status(`step ${r.step}: test accuracy ${(100 * r.accuracy).toFixed(2)}%, loss ${r.loss.toFixed(4)} ` +
      `(${r.images} images in ${s.toFixed(1)} s)`, 'ok');
    draw();
  } catch (e) {
    status(message(e), 'error');
  }
  evaluating = false;
  buttons();
}

async function pause() {
  const run = current;
  if (!run) return;
  if (run.running) {
    run.running = false; // the loop stops after its current call
  } else if (!run.done) {
    status(`training from step ${run.steps} ...`);
    await trainUi(run);
  }
  buttons();
}

async function download() {
  const run = current;
  if (!run) return;
  try {
    const bytes = await run.checkpoint();
    const blob = new Blob([bytes], { type: 'application/octet-stream' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${run.options.preset ?? 'micro'}-fashion-mnist-step-${run.steps}.safetensors`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    status(message(e), 'error');
  }
}

function stats(run) {
  const r = run.results;
  const last = r[r.length - 1];
  const epoch = Math.floor(Math.max(0, run.steps - 1) / run.stepsPerEpoch) + 1;
  const mean = (key) => {
    const tail = r.slice(-50);
    return tail.reduce((s, x) => s + x[key], 0) / tail.length;
  };
  $('train-stats').textContent = last
    ? `step ${run.steps}/${run.target} (epoch ${epoch}) | loss ${last.loss.toFixed(4)} ` +
      `(last 50: ${mean('loss').toFixed(4)}) | train accuracy (last 50) ${(100 * mean('accuracy')).toFixed(1)}% | ` +
      `${run.imagesPerSecond.toFixed(1)} images/s`
    : `step ${run.steps}/${run.target}`;
}

// ---------------------------------------------------------------- curves

function draw() {
  const run = current;
  if (!run) return;
  const r = run.results;
  const smooth = (key) => {
    const out = [];
    let avg;
    for (const x of r) {
      avg = avg === undefined ? x[key] : 0.9 * avg + 0.1 * x[key];
      out.push([x.step, avg]);
    }
    return out;
  };
  const xMax = Math.max(run.target, 1);
  const losses = r.map((x) => [x.step, x.loss]);
  const lossMax = Math.max(0.5, ...losses.map((p) => p[1]).filter(Number.isFinite)) * 1.05;
  plot($('train-loss'), 'loss', [0, xMax], [0, lossMax], [
    { points: losses, color: '#9bb8e8' },
    { points: smooth('loss'), color: '#1f4fa8', label: 'training loss (smoothed)' },
    { points: run.evals.map((e) => [e.step, e.loss]), color: '#c0392b', dots: true, label: 'test loss' },
  ]);
  plot($('train-accuracy'), 'accuracy', [0, xMax], [0, 1], [
    { points: smooth('accuracy'), color: '#1f4fa8', label: 'training accuracy (smoothed)' },
    { points: run.evals.map((e) => [e.step, e.accuracy]), color: '#c0392b', dots: true, label: 'test accuracy' },
  ]);
}

function plot(canvas, title, [x0, x1], [y0, y1], series) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const pad = { l: 70, r: 20, t: 40, b: 50 };
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, w, h);
  ctx.font = '22px system-ui, sans-serif';
  ctx.strokeStyle = '#ddd';
  ctx.fillStyle = '#555';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(y));
    ctx.lineTo(w - pad.r, Y(y));
    ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(y.toFixed(2), pad.l - 8, Y(y) + 7);
  }
  ctx.textAlign = 'center';
  ctx.fillText(`step (of ${x1})`, (pad.l + w - pad.r) / 2, h - 12);
  ctx.textAlign = 'left';
  ctx.fillStyle = '#222';
  ctx.fillText(title, pad.l, 28);
  let legend = w - pad.r;
  for (const s of series.filter((s) => s.label).reverse()) {
    const width = ctx.measureText(s.label).width;
    legend -= width + 36;
    ctx.fillStyle = s.color;
    ctx.fillRect(legend, 16, 20, 6);
    ctx.fillStyle = '#222';
    ctx.fillText(s.label, legend + 26, 28);
  }
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    if (s.dots) {
      for (const [x, y] of s.points) {
        ctx.beginPath();
        ctx.arc(X(x), Y(Math.min(y, y1)), 6, 0, 2 * Math.PI);
        ctx.fill();
      }
      continue;
    }
    ctx.beginPath();
    s.points.forEach(([x, y], i) => {
      const py = Y(Math.min(y, y1));
      if (i === 0) ctx.moveTo(X(x), py);
      else ctx.lineTo(X(x), py);
    });
    ctx.stroke();
  }
}

// ---------------------------------------------------------------- tabs

function showTab(name) {
  for (const tab of ['classify', 'train']) {
    const section = $(tab);
    const button = $(`tab-${tab}`);
    if (!section || !button) continue;
    section.hidden = tab !== name;
    button.classList.toggle('active', tab === name);
  }
}

function wireUi() {
  if (!$('train')) return;
  $('tab-classify')?.addEventListener('click', () => showTab('classify'));
  $('tab-train').addEventListener('click', () => showTab('train'));
  if (location.hash === '#train') showTab('train');
  if (!navigator.gpu) status(NO_WEBGPU, 'error');
  $('train-files').addEventListener('change', (ev) => chooseFiles([...ev.target.files]));
  $('train-fetch').addEventListener('click', fetchFolder);
  $('train-start').addEventListener('click', start);
  $('train-pause').addEventListener('click', pause);
  $('train-eval').addEventListener('click', () => current && evaluateUi(current));
  $('train-download').addEventListener('click', download);
  buttons();
}

wireUi();
