// Shared by the scripts/web_*.mjs drivers: serve web/ (and the command line's files) on
// 127.0.0.1 and open the page in Debian's /usr/bin/chromium through puppeteer-core from
// web/node_modules (never a browser download), WebGPU on SwiftShader.
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
export const webDir = join(root, 'web');

export function fail(script, text) {
  process.stderr.write(`${script}: ${text}\n`);
  process.exit(1);
}

const mime = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.json': 'application/json', '.png': 'image/png',
};

// web/ as static files, and the command line's files under /__input/<index>.
export function serve(inputs) {
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

/**
 * Opens web/index.html in headless Chromium with `inputs` served under /__input/<i>, waits
 * for window.vitWeb and calls `body(page)`; closes everything after. Exits with a message
 * saying what to install when a prerequisite is missing.
 */
export async function withPage(script, inputs, chromiumPath, body) {
  if (!existsSync(join(webDir, 'pkg', 'vit_wgpu_bg.wasm'))) {
    fail(script, 'web/pkg/ is missing: run scripts/build_web.sh first');
  }
  let puppeteer;
  try {
    puppeteer = createRequire(join(webDir, 'package.json'))('puppeteer-core');
  } catch {
    fail(script, 'puppeteer-core is not installed: run `npm ci --prefix web`');
  }
  const chromium = chromiumPath ?? process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(chromium)) fail(script, `${chromium} not found: apt-get install chromium`);
  const server = await serve(inputs);
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
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(0);
    const logs = [];
    page.on('console', (m) => logs.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`page error: ${e.message}`));
    await page.goto(`${base}/index.html`);
    await page.waitForFunction(() => window.vitWeb !== undefined);
    await page.evaluate(() => window.vitWeb.ready());
    return await body(page, logs);
  } finally {
    await browser.close();
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
}
