#!/usr/bin/env node
// `vit-wgpu infer` in headless Chromium: serves web/ on 127.0.0.1, opens the page in Debian's
// /usr/bin/chromium (driven by puppeteer-core from web/node_modules; never a browser
// download), loads the checkpoint and classifies the images through the page's own
// classify path (window.vitWeb), and prints what `vit-wgpu infer` prints.
//
//   node scripts/web_infer.mjs --checkpoint FILE IMAGES... [--top-k K] [--json]
//        [--heads N] [--act gelu|relu] [--ln-eps E] [--image-size HxW] [--batch-size B]
//        [--classes a,b,...]
// Needs: scripts/build_web.sh (web/pkg), `npm ci --prefix web`, apt-get install chromium.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fail as failIn, withPage } from './web_common.mjs';

const fail = (text) => failIn('web_infer', text);

function parseArgs(argv) {
  const a = { images: [], topK: 3, json: false, batchSize: 64, options: {} };
  const valued = new Set(['--checkpoint', '--top-k', '--heads', '--act', '--ln-eps', '--image-size',
    '--batch-size', '--classes', '--chromium']);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    if (arg.startsWith('--') && arg.includes('=')) [arg, value] = [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
    if (valued.has(arg) && value === undefined) {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      value = argv[++i];
    }
    const whole = (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) fail(`${arg}: expected a whole number of at least 1, found '${v}'`);
      return n;
    };
    switch (arg) {
      case '--checkpoint': a.checkpoint = value; break;
      case '--top-k': a.topK = whole(value); break;
      case '--json': a.json = true; break;
      case '--heads': a.options.heads = whole(value); break;
      case '--act': a.options.act = value; break;
      case '--ln-eps': a.options.lnEps = Number(value); break;
      case '--image-size': a.options.imageSize = value; break;
      case '--batch-size': a.batchSize = whole(value); break;
      case '--classes': a.options.classes = value.split(',').map((s) => s.trim()); break;
      case '--chromium': a.chromium = value; break;
      default:
        if (arg.startsWith('--')) fail(`unknown option ${arg}`);
        a.images.push(arg);
    }
  }
  if (!a.checkpoint) fail('--checkpoint FILE is required');
  if (a.images.length === 0) fail('give at least one image file or folder');
  return a;
}

// Files and folders (searched recursively, sorted) as the CLI's expand_inputs.
function expandInputs(inputs) {
  const out = [];
  const isImage = (p) => ['.png', '.jpg', '.jpeg'].includes(extname(p).toLowerCase());
  for (const p of inputs) {
    if (existsSync(p) && statSync(p).isDirectory()) {
      const found = [];
      const stack = [p];
      while (stack.length) {
        const dir = stack.pop();
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          const full = join(dir, e.name);
          if (e.isDirectory()) stack.push(full);
          else if (isImage(full)) found.push(full);
        }
      }
      if (found.length === 0) fail(`${p}: no images (.png, .jpg, .jpeg) found in this folder`);
      found.sort();
      out.push(...found);
    } else {
      out.push(p);
    }
  }
  return out;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (!existsSync(a.checkpoint)) fail(`${a.checkpoint} not found`);
  const images = expandInputs(a.images);
  for (const p of images) if (!existsSync(p)) fail(`${p} not found: no such image file`);
  const result = await withPage('web_infer', [a.checkpoint, ...images], a.chromium, async (page, logs) => {
    const r = await page.evaluate(async (a, names) => {
      try {
        const n = Math.min(a.batchSize, names.length);
        const model = await window.vitWeb.loadModelUrl('/__input/0', a.checkpoint, { ...a.options, batch: n });
        const urls = names.map((_, i) => `/__input/${i + 1}`);
        return { ok: true, batch: n, model, ...(await window.vitWeb.classifyUrls(urls, names, a.topK)) };
      } catch (e) {
        return { ok: false, error: e instanceof Error ? e.message : String(e) };
      }
    }, a, images);
    if (!r.ok && process.env.VIT_WEB_LOG) process.stderr.write(`${logs.join('\n')}\n`);
    return r;
  });
  if (!result.ok) {
    process.stderr.write(`error: ${result.error}\n`);
    process.exit(1);
  }
  for (const p of result.predictions) {
    if (a.json) {
      console.log(JSON.stringify(p));
    } else {
      console.log(`${p.image}: ${p.top.map((t) => `${t.class} ${(100 * t.probability).toFixed(1)}%`).join(', ')}`);
    }
  }
  const n = result.predictions.length;
  const adapter = result.model.adapter.split('\n')[0].trim();
  const summary = { summary: {
    batch_size: result.batch, images: n, images_per_second: n / result.seconds,
    seconds: result.seconds, workers: 1, adapter,
  } };
  if (a.json) console.log(JSON.stringify(summary));
  else process.stderr.write(`${n} images in ${result.seconds.toFixed(2)}s: ${(n / result.seconds).toFixed(1)} images/s (batch ${result.batch}, in Chromium)\n`);
}

main().catch((e) => fail(e.stack ?? String(e)));
