#!/usr/bin/env node
// vit-wgpu and onnxruntime-web side by side in one headless Chromium (WebGPU on SwiftShader
// here): inference images/s per model and system, the ratios, and a GPU-timestamp profile of
// vit-wgpu's forward kernel by kernel against the page's multiply-add and plain-matmul rates.
//
//   python3 scripts/export_onnx.py --out DIR          # the same timm models, ONNX + safetensors
//   node scripts/bench_web.mjs --models DIR [--only micro,tiny,vit_small_patch16_224]
//        [--systems vit-wgpu,ort-webgpu,ort-wasm-1,ort-wasm-2] [--seconds S] [--batch name=B]
//        [--profile micro,tiny] [--train micro] [--fashion-mnist DIR] [--json] [--out FILE.json]
// Batches: 64 (micro, tiny), 8 (vit_small_patch16_224). Each system runs in a fresh page; the
// server sends the cross-origin isolation headers that wasm threads need. vit-wgpu runs
// before and after ORT's `webgpu` pass and counts the mean of the two. Training: vit-wgpu's
// page TrainingSession on Fashion-MNIST (`--train micro[,tiny]|none`; ORT is inference only).
// Needs: scripts/build_web.sh, `npm ci --prefix web` (puppeteer-core, onnxruntime-web).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadavg } from 'node:os';
import { fail as failIn, withPage, webDir } from './web_common.mjs';

const fail = (text) => failIn('bench_web', text);
const ORT = '/node_modules/onnxruntime-web/dist';

function parseArgs(argv) {
  const a = {
    only: ['micro', 'tiny', 'vit_small_patch16_224'],
    systems: ['vit-wgpu', 'ort-webgpu', 'ort-wasm-1', 'ort-wasm-2'],
    seconds: 5,
    // A profile is one more forward: ViT-S/16's takes minutes on SwiftShader.
    profile: ['micro', 'tiny'],
    // Training on Fashion-MNIST (28x28x1: the preset's width and depth on that data); a tiny
    // step takes minutes on SwiftShader.
    train: ['micro'],
    fashion: '/usr/share/datasets/fashion-mnist',
    batch: { micro: 64, tiny: 64, vit_small_patch16_224: 8 },
    json: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--models': a.models = resolve(value()); break;
      case '--only': a.only = value().split(','); break;
      case '--systems': a.systems = value().split(','); break;
      case '--seconds': a.seconds = Number(value()); break;
      case '--profile': a.profile = value().split(','); break;
      case '--train': {
        const v = value();
        a.train = v === 'none' ? [] : v.split(',');
        break;
      }
      case '--fashion-mnist': a.fashion = value(); break;
      case '--batch': {
        const [name, b] = value().split('=');
        a.batch[name] = Number(b);
        break;
      }
      case '--chromium': a.chromium = value(); break;
      case '--json': a.json = true; break;
      case '--out': a.out = value(); break;
      default: fail(`unknown option ${arg}`);
    }
  }
  if (!a.models) fail('--models DIR (written by scripts/export_onnx.py) is required');
  const index = join(a.models, 'models.json');
  if (!existsSync(index)) fail(`${index} not found: run scripts/export_onnx.py --out ${a.models}`);
  a.index = JSON.parse(readFileSync(index, 'utf8'));
  for (const m of a.only) if (!a.index[m]) fail(`${m} is not in ${index}`);
  if (!existsSync(join(webDir, 'node_modules/onnxruntime-web'))) fail('run `npm ci --prefix web`');
  return a;
}

// ------------------------------------------------------------------ in the page

/** `fn(...args)` in the page, polled: one forward can outlast a DevTools call's timeout
 * (puppeteer's 180 s) on SwiftShader. `fn` must be self-contained (it is sent as source). */
async function inPage(page, fn, ...args) {
  await page.evaluate((source, args) => {
    window.benchTask = { done: false };
    // eslint-disable-next-line no-new-func
    const f = new Function(`return (${source})`)();
    f(...args).then((result) => { window.benchTask = { done: true, result }; },
      (e) => { window.benchTask = { done: true, error: String(e?.message ?? e) }; });
  }, fn.toString(), args);
  for (;;) {
    await new Promise((ok) => setTimeout(ok, 1000));
    const task = await page.evaluate(() => window.benchTask);
    if (task.done) {
      if (task.error !== undefined) throw new Error(task.error);
      return task.result;
    }
  }
}

/** vit-wgpu: load, one warm-up forward, then forwards back to back for about `seconds`. */
async function vitInPage(url, name, heads, batch, seconds, profile) {
  const loaded = await window.vitWeb.loadModelUrl(url, name, { heads, batch });
  const model = window.vitWeb.current().model;
  let t0 = performance.now();
  await model.run_forwards(1);
  const warm = (performance.now() - t0) / 1000;
  const repeats = Math.max(1, Math.min(200, Math.round(seconds / warm)));
  t0 = performance.now();
  await model.run_forwards(repeats);
  const s = (performance.now() - t0) / 1000;
  const out = { images_per_second: repeats * batch / s, repeats, seconds: s, load_seconds: loaded.seconds };
  out.adapter = window.vitWeb.adapter().split('\n')[0].trim();
  if (profile) {
    out.profile = JSON.parse(await model.profile());
    out.fma_gflops = await model.fma_gflops(64);
  }
  return out;
}

/** vit-wgpu training (the page's TrainingSession, Fashion-MNIST's idx files): one warm-up
 * step, then steps back to back for about `seconds`, flushed (every step's loss read back). */
async function trainInPage(urls, names, preset, batch, seconds) {
  const { TrainingSession } = await import('/pkg/vit_wgpu.js');
  const files = [];
  for (const u of urls) files.push(new Uint8Array(await (await fetch(u)).arrayBuffer()));
  let t0 = performance.now();
  const session = await TrainingSession.create(files, names, { preset, batchSize: batch, epochs: 1 });
  const loadSeconds = (performance.now() - t0) / 1000;
  t0 = performance.now();
  await session.step(1);
  await session.flush();
  const warm = (performance.now() - t0) / 1000;
  const repeats = Math.max(1, Math.min(100, Math.round(seconds / warm)));
  t0 = performance.now();
  await session.step(repeats);
  await session.flush();
  const s = (performance.now() - t0) / 1000;
  session.free();
  return { images_per_second: repeats * batch / s, repeats, seconds: s, warm_seconds: warm, load_seconds: loadSeconds };
}

/** onnxruntime-web: session, one warm-up run, then runs (each reads the logits back). */
async function ortInPage(ortModule, url, ep, threads, shape, seconds) {
  const ort = await import(ortModule);
  ort.env.wasm.numThreads = threads;
  const t = performance.now();
  const session = await ort.InferenceSession.create(url, { executionProviders: [ep] });
  const loadSeconds = (performance.now() - t) / 1000;
  const data = new Float32Array(shape.reduce((x, y) => x * y));
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.5;
  const feeds = { images: new ort.Tensor('float32', data, shape) };
  let t0 = performance.now();
  await session.run(feeds);
  const warm = (performance.now() - t0) / 1000;
  let runs = 0;
  t0 = performance.now();
  do {
    await session.run(feeds);
    runs++;
  } while ((performance.now() - t0) / 1000 < seconds && runs < 200);
  const s = (performance.now() - t0) / 1000;
  await session.release();
  return {
    images_per_second: runs * shape[0] / s, repeats: runs, seconds: s, warm_seconds: warm,
    load_seconds: loadSeconds, isolated: self.crossOriginIsolated,
  };
}

/** A plain matmul (one output per invocation, a k loop over storage buffers, 16x16
 * workgroups): the rate the page's loads allow, n³ for each n. */
async function matmulInPage(sizes) {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter.requestDevice();
  const code = `
    @group(0) @binding(0) var<storage, read> a: array<f32>;
    @group(0) @binding(1) var<storage, read> b: array<f32>;
    @group(0) @binding(2) var<storage, read_write> c: array<f32>;
    override N: u32;
    @compute @workgroup_size(16, 16)
    fn main(@builtin(global_invocation_id) g: vec3<u32>) {
      if (g.x >= N || g.y >= N) { return; }
      var acc = 0.0;
      for (var k = 0u; k < N; k++) { acc += a[g.y * N + k] * b[k * N + g.x]; }
      c[g.y * N + g.x] = acc;
    }`;
  const module = device.createShaderModule({ code });
  const out = {};
  for (const n of sizes) {
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main', constants: { N: n } } });
    const buf = () => device.createBuffer({ size: 4 * n * n, usage: GPUBufferUsage.STORAGE });
    const group = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [buf(), buf(), buf()].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const run = async () => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(Math.ceil(n / 16), Math.ceil(n / 16));
      pass.end();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
    };
    await run();
    const times = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await run();
      times.push((performance.now() - t0) / 1000);
    }
    times.sort((x, y) => x - y);
    out[n] = 2 * n ** 3 / times[1] / 1e9;
  }
  device.destroy();
  return out;
}

// ------------------------------------------------------------------ the profile

/** Multiply-adds of one forward of `c` (timm layout) at batch b, per kernel family. */
function forwardFlops(c, b) {
  const [ch, h, w] = c.image;
  const p = c.patch;
  const patches = (h / p) * (w / p);
  const n = patches + 1;
  const { dim: d, depth, mlp: f, classes } = c;
  const perLayer = 2 * n * (d * 3 * d + d * d + 2 * d * f);
  return {
    gemm: b * (depth * perLayer + 2 * patches * ch * p * p * d + 2 * d * classes),
    attention: b * depth * 4 * n * n * d,
  };
}

function summarise(profile, flops) {
  const byFamily = new Map();
  for (const c of profile.commands) {
    // every GEMM (attention) kernel in one family: the flop count is the forward's GEMMs
    // (attention) together
    const shader = c.family.replace(/\.wgsl$/, '');
    const key = shader.includes('gemm') ? 'gemm' : shader.includes('attention') ? 'attention' : shader;
    const e = byFamily.get(key) ?? { family: key, kernels: [], launches: 0, seconds: 0 };
    if (!e.kernels.includes(shader)) e.kernels.push(shader);
    e.launches++;
    e.seconds += c.seconds;
    byFamily.set(key, e);
  }
  const total = [...byFamily.values()].reduce((s, e) => s + e.seconds, 0);
  return [...byFamily.values()].sort((x, y) => y.seconds - x.seconds).map((e) => {
    const kind = e.family.includes('gemm') ? 'gemm' : e.family.includes('attention') ? 'attention' : null;
    return {
      ...e, share: e.seconds / total,
      gflops: kind ? flops[kind] / e.seconds / 1e9 : null,
    };
  });
}

// ------------------------------------------------------------------ main

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const names = a.only;
  const inputs = names.flatMap((n) => [join(a.models, a.index[n].safetensors), join(a.models, a.index[n].onnx)]);
  const idxNames = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
    't10k-labels-idx1-ubyte.gz'];
  if (a.train.length && !idxNames.every((f) => existsSync(join(a.fashion, f)))) {
    fail(`${a.fashion}: Fashion-MNIST's idx files not found (apt-get install dataset-fashion-mnist, ` +
      'or --fashion-mnist DIR, or --train none)');
  }
  const firstIdx = inputs.length;
  if (a.train.length) inputs.push(...idxNames.map((f) => join(a.fashion, f)));
  const training = {};
  const load = loadavg().map((x) => x.toFixed(2)).join(' ');
  const results = {};
  const started = Date.now();
  const report = await withPage('bench_web', inputs, a.chromium, async (page, logs) => {
    const base = new URL(page.url()).origin;
    const fresh = async () => {
      await page.goto(`${base}/index.html`);
      await page.waitForFunction(() => window.vitWeb !== undefined);
      await page.evaluate(() => window.vitWeb.ready());
    };
    const rates = await inPage(page, matmulInPage, [256, 512]);
    for (const [i, name] of names.entries()) {
      const m = a.index[name];
      const batch = a.batch[name] ?? 8;
      const shape = [batch, ...m.image];
      results[name] = { batch };
      for (const system of a.systems) {
        await fresh();
        process.stderr.write(`${name} batch ${batch}: ${system} ...\n`);
        try {
          if (system === 'vit-wgpu') {
            results[name][system] = await inPage(page, vitInPage, `/__input/${2 * i}`, m.safetensors,
              m.heads, batch, a.seconds, a.profile.includes(name));
          } else {
            const [, ep, threads] = system.match(/^ort-(webgpu|wasm)(?:-(\d+))?$/) ?? [];
            if (!ep) fail(`unknown system ${system}`);
            const module = ep === 'webgpu' ? `${ORT}/ort.webgpu.bundle.min.mjs` : `${ORT}/ort.wasm.bundle.min.mjs`;
            results[name][system] = await inPage(page, ortInPage, module, `/__input/${2 * i + 1}`, ep,
              Number(threads ?? 1), shape, a.seconds);
          }
        } catch (e) {
          results[name][system] = { error: String(e.message ?? e).split('\n')[0] };
          if (process.env.VIT_WEB_LOG) process.stderr.write(`${logs.join('\n')}\n`);
        }
        const r = results[name][system];
        process.stderr.write(`  ${r.error ?? `${r.images_per_second.toPrecision(4)} img/s`}\n`);
        const v = results[name]['vit-wgpu'];
        if (system === 'ort-webgpu' && v?.images_per_second) {
          // vit-wgpu again after ORT's long pass: the ratio takes the mean of the two passes
          // around it, so a drift of the machine's speed meets both systems alike
          await fresh();
          process.stderr.write(`${name} batch ${batch}: vit-wgpu again ...\n`);
          try {
            const again = await inPage(page, vitInPage, `/__input/${2 * i}`, m.safetensors,
              m.heads, batch, a.seconds, false);
            v.passes = [v.images_per_second, again.images_per_second];
            v.images_per_second = (v.passes[0] + v.passes[1]) / 2;
            process.stderr.write(`  ${again.images_per_second.toPrecision(4)} img/s\n`);
          } catch (e) {
            process.stderr.write(`  ${String(e.message ?? e).split('\n')[0]}\n`);
          }
        }
      }
    }
    for (const preset of a.train) {
      await fresh();
      process.stderr.write(`training ${preset} batch 64 on Fashion-MNIST ...\n`);
      const urls = idxNames.map((_, k) => `/__input/${firstIdx + k}`);
      try {
        training[preset] = await inPage(page, trainInPage, urls, idxNames, preset, 64, a.seconds);
      } catch (e) {
        training[preset] = { error: String(e.message ?? e).split('\n')[0] };
      }
      const r = training[preset];
      process.stderr.write(`  ${r.error ?? `${r.images_per_second.toPrecision(4)} img/s`}\n`);
    }
    return { rates };
  });
  const profiles = {};
  for (const name of names) {
    const v = results[name]['vit-wgpu'];
    if (!v?.profile) continue;
    const m = a.index[name];
    profiles[name] = {
      timestamps: v.profile.timestamps,
      families: summarise(v.profile, forwardFlops(m, results[name].batch)),
      launches: v.profile.commands,
    };
    delete v.profile;
  }
  const out = {
    load_before: load, load_after: loadavg().map((x) => x.toFixed(2)).join(' '),
    minutes: (Date.now() - started) / 60000,
    adapter: Object.values(results).map((r) => r['vit-wgpu']?.adapter).find(Boolean) ?? '',
    matmul_gflops: report.rates, results, training, profiles,
  };
  if (a.out) writeFileSync(a.out, `${JSON.stringify(out, null, 1)}\n`);
  if (a.json) {
    console.log(JSON.stringify(out));
    return;
  }
  print(out, a);
}

function print(out, a) {
  const fmt = (r) => (r === undefined ? '-' : r.error ? 'error' : r.images_per_second.toPrecision(3));
  console.log(`adapter: ${out.adapter}; load average ${out.load_before} -> ${out.load_after}; ${out.minutes.toFixed(1)} min`);
  console.log(`| model (batch) | ${a.systems.join(' | ')} | vit-wgpu / ort-webgpu | vit-wgpu / best ort-wasm |`);
  console.log(`|---|${a.systems.map(() => '---|').join('')}---|---|`);
  for (const [name, r] of Object.entries(out.results)) {
    const v = r['vit-wgpu']?.images_per_second;
    const g = r['ort-webgpu']?.images_per_second;
    const w = Math.max(...['ort-wasm-1', 'ort-wasm-2'].map((s) => r[s]?.images_per_second ?? 0));
    const ratio = (x, y) => (x && y ? `${(x / y).toPrecision(3)}x` : '-');
    console.log(`| ${name} (${r.batch}) | ${a.systems.map((s) => fmt(r[s])).join(' | ')} | ${ratio(v, g)} | ${ratio(v, w)} |`);
  }
  for (const [name, r] of Object.entries(out.results)) {
    for (const [s, v] of Object.entries(r)) {
      if (v?.error) console.log(`${name} ${s}: ${v.error}`);
      if (v?.isolated === false && s.endsWith('-2')) console.log(`${name} ${s}: not cross-origin isolated: ran 1 thread`);
    }
  }
  for (const [preset, r] of Object.entries(out.training)) {
    console.log(`training ${preset} (batch 64, Fashion-MNIST, vit-wgpu): ${r.error ?? `${r.images_per_second.toPrecision(3)} img/s`}`);
  }
  const rates = Object.entries(out.matmul_gflops).map(([n, g]) => `${n}³ ${g.toFixed(2)}`).join(', ');
  for (const [name, p] of Object.entries(out.profiles)) {
    const fma = out.results[name]['vit-wgpu'].fma_gflops;
    console.log(`\n${name}: one forward, ${p.timestamps ? 'GPU timestamps per launch' : 'wall clock per launch'}; ` +
      `page multiply-add ${fma.toFixed(1)} GFLOP/s, plain matmul ${rates} GFLOP/s`);
    console.log('| kernel family | launches | ms | share | GFLOP/s |');
    console.log('|---|---|---|---|---|');
    for (const f of p.families) {
      const kernels = f.kernels.join(', ') === f.family ? '' : ` (${f.kernels.join(', ')})`;
      console.log(`| ${f.family}${kernels} | ${f.launches} | ${(1000 * f.seconds).toFixed(1)} | ${(100 * f.share).toFixed(0)}% | ${f.gflops ? f.gflops.toFixed(2) : ''} |`);
    }
  }
}

main().catch((e) => fail(e.stack ?? String(e)));
