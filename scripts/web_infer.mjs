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
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const webDir = join(root, 'web');

function fail(text) {
  process.stderr.write(`web_infer: ${text}\n`);
  process.exit(1);
}

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

const mime = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.json': 'application/json', '.png': 'image/png',
};

// web/ as static files, and the command line's files under /__input/<index>.
function serve(inputs) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    let file;
    const m = url.pathname.match(/^\/__input\/(\d+)$/);
    if (m) {
      file = inputs[Number(m[1])];
    } else {
      const rel = decodeURIComponent(url.pathname === '/' ? '/index.html' : url.pathname);
      file = join(webDir, rel);
      if (!file.startsWith(webDir)) file = undefined;
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`not found: ${url.pathname}`);
      return;
    }
    res.writeHead(200, {
      'content-type': mime[extname(file)] ?? 'application/octet-stream',
      'cross-origin-opener-policy': 'same-origin',
      'cross-origin-embedder-policy': 'require-corp',
    });
    res.end(readFileSync(file));
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  if (!existsSync(join(webDir, 'pkg', 'vit_wgpu_bg.wasm'))) {
    fail('web/pkg/ is missing: run scripts/build_web.sh first');
  }
  let puppeteer;
  try {
    puppeteer = createRequire(join(webDir, 'package.json'))('puppeteer-core');
  } catch {
    fail('puppeteer-core is not installed: run `npm ci --prefix web`');
  }
  const chromium = a.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(chromium)) fail(`${chromium} not found: apt-get install chromium`);
  if (!existsSync(a.checkpoint)) fail(`${a.checkpoint} not found`);
  const images = expandInputs(a.images);
  for (const p of images) if (!existsSync(p)) fail(`${p} not found: no such image file`);

  const server = await serve([a.checkpoint, ...images]);
  const base = `http://127.0.0.1:${server.address().port}`;
  const profile = mkdtempSync(join(tmpdir(), 'vit-web-'));
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    userDataDir: profile,
    // WebGPU on SwiftShader; no background traffic (this machine's network is closed).
    args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-quic', '--disable-default-apps'],
  });
  let code = 0;
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(0);
    const logs = [];
    page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`page error: ${e.message}`));
    await page.goto(`${base}/index.html`);
    await page.waitForFunction(() => window.vitWeb !== undefined);
    const names = images.map((p) => p);
    const result = await page.evaluate(async (a, count, names) => {
      try {
        await window.vitWeb.ready();
        const n = Math.min(a.batchSize, count);
        const model = await window.vitWeb.loadModelUrl('/__input/0', a.checkpoint, { ...a.options, batch: n });
        const urls = names.map((_, i) => `/__input/${i + 1}`);
        const r = await window.vitWeb.classifyUrls(urls, names, a.topK);
        return { ok: true, batch: n, model, ...r };
      } catch (e) {
        return { ok: false, error: e instanceof Error ? e.message : String(e) };
      }
    }, a, images.length, names);
    if (!result.ok) {
      process.stderr.write(`error: ${result.error}\n`);
      if (process.env.VIT_WEB_LOG) process.stderr.write(`${logs.join('\n')}\n`);
      code = 1;
    } else {
      for (const p of result.predictions) {
        if (a.json) {
          console.log(JSON.stringify(p));
        } else {
          console.log(`${p.image}: ${p.top.map((t) => `${t.class} ${(100 * t.probability).toFixed(1)}%`).join(', ')}`);
        }
      }
      const n = result.predictions.length;
      const summary = { summary: {
        batch_size: result.batch, images: n, images_per_second: n / result.seconds,
        seconds: result.seconds, workers: 1, adapter: result.model.adapter.split('\n')[0],
      } };
      if (a.json) console.log(JSON.stringify(summary));
      else process.stderr.write(`${n} images in ${result.seconds.toFixed(2)}s: ${(n / result.seconds).toFixed(1)} images/s (batch ${result.batch}, in Chromium on ${summary.summary.adapter})\n`);
    }
  } finally {
    await browser.close();
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}

main().catch((e) => fail(e.stack ?? String(e)));
