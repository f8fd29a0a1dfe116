#!/usr/bin/env node
// The page end to end, as a person uses it, in headless Chromium (WebGPU on SwiftShader):
//  1. the cost of the page: in a fresh browser context (empty caches), open
//     index.html?checkpoint=..&image=.. and time page load to the first result on screen
//     (wasm download and compile, WebGPU device, pipeline creation, the forward);
//  2. the real UI: pick the checkpoint and then the image in the file inputs, wait for the
//     top-5 and the attention rollout, save a PNG screenshot, and read back what the page
//     shows (top-1 label and probability, the result card's box, the rollout drawn).
//
//   node scripts/web_page.mjs --checkpoint FILE --image IMG [--image IMG2 ...]
//        [--screenshot OUT.png (default: $TMPDIR/web_page.png)] [--heads N] [--batch B] [--json]
// What is read back is the first image's card; the cold start classifies the first image.
// Needs: scripts/build_web.sh (web/pkg), `npm ci --prefix web`, apt-get install chromium.
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { resolve, join } from 'node:path';
import { tmpdir } from 'node:os';
import { fail as failIn, withPage, webDir } from './web_common.mjs';

const fail = (text) => failIn('web_page', text);

function parseArgs(argv) {
  // the screenshot goes to the temporary folder unless asked for elsewhere
  const a = { json: false, screenshot: join(tmpdir(), 'web_page.png'), batch: 8, images: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--checkpoint': a.checkpoint = resolve(value()); break;
      case '--image': a.images.push(resolve(value())); break;
      case '--screenshot': a.screenshot = value(); break;
      case '--heads': a.heads = Number(value()); break;
      case '--batch': a.batch = Number(value()); break;
      case '--chromium': a.chromium = value(); break;
      case '--json': a.json = true; break;
      default: fail(`unknown option ${arg}`);
    }
  }
  if (!a.checkpoint || a.images.length === 0) fail('--checkpoint FILE and --image IMG are required');
  for (const p of [a.checkpoint, ...a.images]) if (!existsSync(p)) fail(`${p} not found`);
  return a;
}

/** What the page itself reported as an error (printed without a stack). */
class PageError extends Error {}

// Waits for the page's status line to leave "working" and returns it; an error throws, so
// the browser is closed and its profile removed before the script fails.
async function settle(page, done, logs) {
  await page.waitForFunction((prefix) => {
    const s = document.getElementById('status');
    return s.className === 'error' || s.textContent.startsWith(prefix);
  }, { polling: 100 }, done);
  const s = await page.$eval('#status', (e) => ({ text: e.textContent, kind: e.className }));
  if (s.kind === 'error') {
    if (process.env.VIT_WEB_LOG) process.stderr.write(`${logs.join('\n')}\n`);
    throw new PageError(`the page says: ${s.text}`);
  }
  return s.text;
}

/** Page load to first result in a fresh browser context (no HTTP or code cache). */
async function coldStart(page, a, logs) {
  const context = await page.browser().createBrowserContext();
  try {
    const fresh = await context.newPage();
    fresh.setDefaultTimeout(0);
    fresh.on('pageerror', (e) => logs.push(`page error (cold start): ${e.message}`));
    const base = new URL(page.url()).origin;
    const query = new URLSearchParams({ checkpoint: '/__input/0', image: '/__input/1', batch: a.batch });
    if (a.heads) query.set('heads', a.heads);
    await fresh.goto(`${base}/index.html?${query}`);
    await settle(fresh, 'done', logs);
    return await fresh.evaluate(() => ({
      wasm_ready_ms: window.vitWeb.wasmReadyMs,
      first_result_ms: window.vitWeb.firstResultMs,
      rollout_ms: performance.now() - window.vitWeb.firstResultMs,
      model_load_s: window.vitWeb.current().seconds,
    }));
  } finally {
    await context.close();
  }
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const wasm = join(webDir, 'pkg', 'vit_wgpu_bg.wasm');
  const result = await withPage('web_page', [a.checkpoint, ...a.images], a.chromium, async (page, logs) => {
    const cost = await coldStart(page, a, logs);
    await page.setViewport({ width: 900, height: 640 });
    if (a.heads) await page.$eval('#heads', (e, v) => { e.value = v; }, String(a.heads));
    await page.$eval('#batch', (e, v) => { e.value = v; }, String(a.batch));
    await (await page.$('#checkpoint-file')).uploadFile(a.checkpoint);
    await settle(page, 'loaded', logs);
    await (await page.$('#images')).uploadFile(...a.images);
    await settle(page, 'done', logs);
    const shown = await page.evaluate(() => {
      const card = document.querySelector('#results .card');
      const box = card.getBoundingClientRect();
      const first = card.querySelector('li');
      return {
        image: card.querySelector('h3').textContent,
        top1: first.querySelector('.name').textContent,
        top1_percent: first.querySelector('.pct').textContent,
        labels: [...card.querySelectorAll('li .name')].map((e) => e.textContent),
        card_box: { x: box.x + scrollX, y: box.y + scrollY, width: box.width, height: box.height },
        speed: document.getElementById('speed').textContent,
        model: document.getElementById('model-info').textContent,
        rollout: window.vitWeb.shown[0].rollout,
      };
    });
    await page.screenshot({ path: a.screenshot, fullPage: true });
    const adapter = (await page.evaluate(() => window.vitWeb.adapter())) ?? '';
    return { ...shown, cost, adapter: adapter.split('\n')[0].trim() };
  });
  const bytes = readFileSync(wasm);
  result.cost.wasm_bytes = statSync(wasm).size;
  result.cost.wasm_gzip_bytes = gzipSync(bytes, { level: 9 }).length;
  result.screenshot = a.screenshot;
  if (a.json) {
    console.log(JSON.stringify(result));
  } else {
    const c = result.cost;
    console.log(`${result.image}: ${result.top1} ${result.top1_percent} (${result.speed})`);
    console.log(`screenshot: ${a.screenshot}`);
    console.log(`wasm ${(c.wasm_bytes / 1e6).toFixed(2)} MB, gzip ${(c.wasm_gzip_bytes / 1e6).toFixed(2)} MB; ` +
      `page load to first result ${(c.first_result_ms / 1000).toFixed(2)} s (wasm ready at ` +
      `${(c.wasm_ready_ms / 1000).toFixed(2)} s, model load with its pipelines ${c.model_load_s.toFixed(2)} s), ` +
      `rollout after it ${(c.rollout_ms / 1000).toFixed(2)} s`);
  }
}

main().catch((e) => fail(e instanceof PageError ? e.message : (e.stack ?? String(e))));
