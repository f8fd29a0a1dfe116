#!/usr/bin/env node
// `vit-wgpu train` on Fashion-MNIST in headless Chromium: serves web/ on 127.0.0.1, opens the
// page in Debian's /usr/bin/chromium (puppeteer-core from web/node_modules; never a browser
// download), trains through the page's Train tab API (window.vitTrain: the wasm
// TrainingSession on Chromium's WebGPU), evaluates on the test split and saves the checkpoint.
//
//   node scripts/web_train.mjs [--data-dir DIR] [--steps N] [--preset micro|tiny]
//        [--seed S] [--batch-size B] [--epochs E] [--lr LR] [--warmup W] [--no-augment]
//        [--limit-train N] [--limit-eval N] [--checkpoint-out FILE] [--json]
// Prints one line per optimiser step: with --json `{"step":S,"loss":L}` as
// `vit-wgpu train --log-steps` writes them, then `{"eval":{...}}` and `{"summary":{...}}`.
// The flags and their defaults are `vit-wgpu train`'s; --steps is its --max-steps (default:
// the whole run). --data-dir defaults to /usr/share/datasets/fashion-mnist.
// Needs: scripts/build_web.sh (web/pkg), `npm ci --prefix web`, apt-get install chromium.
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail as failIn, withPage } from './web_common.mjs';

const fail = (text) => failIn('web_train', text);
const FILES = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
  't10k-labels-idx1-ubyte'];

function parseArgs(argv) {
  const a = { dataDir: '/usr/share/datasets/fashion-mnist', json: false, options: {} };
  const valued = new Set(['--data-dir', '--steps', '--preset', '--seed', '--batch-size', '--epochs',
    '--lr', '--warmup', '--limit-train', '--limit-eval', '--checkpoint-out', '--chromium']);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    if (arg.startsWith('--') && arg.includes('=')) [arg, value] = [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)];
    if (valued.has(arg) && value === undefined) {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      value = argv[++i];
    }
    const whole = (v, min = 1) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) fail(`${arg}: expected a whole number of at least ${min}, found '${v}'`);
      return n;
    };
    switch (arg) {
      case '--data-dir': a.dataDir = value; break;
      case '--steps': a.steps = whole(value); break;
      case '--preset': a.options.preset = value; break;
      case '--seed': a.options.seed = whole(value, 0); break;
      case '--batch-size': a.options.batchSize = whole(value); break;
      case '--epochs': a.options.epochs = whole(value); break;
      case '--lr': a.options.lr = Number(value); break;
      case '--warmup': a.options.warmup = whole(value, 0); break;
      case '--no-augment': a.options.augment = false; break;
      case '--limit-train': a.options.limitTrain = whole(value); break;
      case '--limit-eval': a.options.limitEval = whole(value); break;
      case '--checkpoint-out': a.checkpointOut = value; break;
      case '--json': a.json = true; break;
      case '--chromium': a.chromium = value; break;
      default: fail(`unknown option ${arg}`);
    }
  }
  return a;
}

// The four files as the CLI finds them: gzipped or not.
function dataFiles(dir) {
  return FILES.map((stem) => {
    const found = [`${stem}.gz`, stem].map((f) => join(dir, f)).find((p) => existsSync(p));
    if (!found) {
      fail(`${join(dir, `${stem}.gz`)} not found: pass --data-dir with a folder holding the four ` +
        'Fashion-MNIST files, or apt-get install dataset-fashion-mnist');
    }
    return found;
  });
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const files = dataFiles(a.dataDir);
  const result = await withPage('web_train', files, a.chromium, async (page, logs) => {
    // Started here and polled below: one evaluate that lasted the whole run would meet
    // puppeteer's protocol timeout (3 minutes) on a slow adapter.
    await page.evaluate((files, options, steps) => {
      const urls = files.map((_, i) => `/__input/${i}`);
      // Named by their paths, so messages read as the CLI's.
      window.vitTrain.trainUrls(urls, files, options, steps).then(
        (r) => { window.webTrainResult = { ok: true, ...r }; },
        (e) => { window.webTrainResult = { ok: false, error: e instanceof Error ? e.message : String(e) }; },
      );
    }, files, a.options, a.steps ?? null);
    let r;
    while (!(r = await page.evaluate(() => window.webTrainResult))) {
      await new Promise((ok) => setTimeout(ok, 500));
    }
    if (!r.ok && process.env.VIT_WEB_LOG) process.stderr.write(`${logs.join('\n')}\n`);
    return r;
  });
  if (!result.ok) {
    process.stderr.write(`error: ${result.error}\n`);
    process.exit(1);
  }
  if (a.checkpointOut) writeFileSync(a.checkpointOut, Buffer.from(result.checkpoint, 'base64'));
  const ev = result.evaluation;
  if (a.json) {
    for (const r of result.results) console.log(JSON.stringify({ step: r.step, loss: r.loss }));
    console.log(JSON.stringify({ eval: { images: ev.images, loss: ev.loss, accuracy: ev.accuracy } }));
    console.log(JSON.stringify({ summary: {
      steps: result.results.length, model: result.config.model, seconds: result.seconds,
      images_per_second: result.imagesPerSecond, adapter: result.adapter.split('\n')[0].trim(),
    } }));
  } else {
    for (const r of result.results) console.log(`step ${r.step}: loss ${r.loss.toFixed(6)}`);
    console.log(`test accuracy ${(100 * ev.accuracy).toFixed(2)}%, loss ${ev.loss.toFixed(4)} (${ev.images} images)`);
    process.stderr.write(`${result.results.length} steps in ${result.seconds.toFixed(1)}s: ` +
      `${result.imagesPerSecond.toFixed(1)} images/s (in Chromium)\n`);
  }
}

main().catch((e) => fail(e.stack ?? String(e)));
