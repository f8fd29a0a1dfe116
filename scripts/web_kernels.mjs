#!/usr/bin/env node
// Every kernel's CPU-reference check (src/kernels/checks: each portable entry point,
// forward and backward, odd shapes, outputs poisoned with NaN) on the page's WebGPU in
// headless Chromium. One call per check: a check that traps the wasm module is reported
// with its kernel and shape (and the panic message from the console), and the page is
// reloaded for the rest. Prints one line per check; exits 1 naming every failure.
//   node scripts/web_kernels.mjs [--filter TEXT] [--seed N] [--perturb] [--json]
// --filter keeps the checks whose kernel, check, shape or entry points contain TEXT;
// --perturb moves one element of each check's first reference (every check must fail).
import { fail as failIn, withPage } from './web_common.mjs';

const fail = (text) => failIn('web_kernels', text);
// Longest a check may take (SwiftShader compiles a tiled pipeline in 5-20 s); under
// puppeteer's 180 s protocol timeout, so a hung check is reported, not the harness.
const CHECK_SECONDS = 150;
const args = process.argv.slice(2);
const options = { filter: '', seed: Math.floor(Math.random() * 2 ** 32), perturb: false, json: false };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--filter') options.filter = args[++i] ?? fail('--filter needs a value');
  else if (a === '--seed') options.seed = Number(args[++i]);
  else if (a === '--perturb') options.perturb = true;
  else if (a === '--json') options.json = true;
  else fail(`unknown argument ${a}: expected --filter TEXT, --seed N, --perturb or --json`);
}
if (!Number.isInteger(options.seed) || options.seed < 0 || options.seed >= 2 ** 32) {
  fail('--seed takes a whole number in 0..2^32');
}

/** A KernelChecks on the page, from the package app.js already initialised. */
async function setUp(page) {
  const adapter = await page.evaluate(async () => {
    const pkg = await import('/pkg/vit_wgpu.js');
    if (!pkg.KernelChecks) return undefined;
    window.kernelChecks = await pkg.KernelChecks.create();
    return window.kernelChecks.adapter;
  });
  if (adapter === undefined) {
    fail('web/pkg has no kernel checks: build it with `WEB_FEATURES=web-checks scripts/build_web.sh`');
  }
  return adapter;
}

function describe(c) {
  return `${c.kernel} ${c.check} (${c.shape})`;
}

const t0 = performance.now();
const failures = [];
let count = 0;
const entries = new Set();
await withPage('web_kernels', [], undefined, async (page, logs) => {
  const adapter = await setUp(page);
  if (!options.json) console.log(`adapter: ${adapter.trim()}\nseed ${options.seed} (--seed ${options.seed} replays it)`);
  const list = JSON.parse(await page.evaluate((f) => window.kernelChecks.list(f), options.filter));
  if (list.length === 0) fail(`no kernel check matches --filter '${options.filter}'`);
  for (const c of list) {
    const started = performance.now();
    const logged = logs.length;
    const result = await page.evaluate(async (id, seed, perturb, limit) => {
      // A panic traps the module and leaves the check pending: its hook calls onWasmPanic.
      const stopped = new Promise((_, reject) => {
        window.onWasmPanic = (m) => reject(new Error(m));
        setTimeout(() => reject(new Error(`no result after ${limit} s`)), limit * 1000);
      });
      try {
        return { line: await Promise.race([window.kernelChecks.run(id, seed, perturb), stopped]) };
      } catch (e) {
        return { thrown: e instanceof Error ? e.message : String(e) };
      }
    }, c.id, options.seed, options.perturb, CHECK_SECONDS);
    const seconds = (performance.now() - started) / 1000;
    let r;
    if (result.line !== undefined) {
      r = JSON.parse(result.line);
    } else {
      // A trap leaves the module unusable: say what was running, then start afresh.
      const panic = logs.slice(logged).filter((l) => l.includes('panic'));
      const seen = panic.length && !result.thrown.includes('panic') ? ` (${panic.join(' | ')})` : '';
      const message = `${result.thrown}${seen}`.replace(/\s*\n\s*/g, ' ');
      r = { ...c, ok: false, error: `${describe(c)}: ${message}` };
      await page.reload();
      await page.waitForFunction(() => window.vitWeb !== undefined);
      await page.evaluate(() => window.vitWeb.ready());
      await setUp(page);
    }
    count++;
    for (const e of r.launched ?? []) entries.add(e);
    if (!r.ok) failures.push(r.error ?? `${describe(c)}: failed`);
    if (options.json) {
      console.log(JSON.stringify({ ...r, seconds }));
    } else {
      const worst = r.max_err === undefined || r.max_err === null ? 'no comparison'
        : `${r.worst} ${Number(r.max_err).toExponential(2)} (tolerance ${Number(r.tol).toExponential(0)})`;
      // a failure's message names the kernel, the check and the shape itself
      const status = r.unsupported ? `skip ${describe(c)}: ${r.unsupported}`
        : r.ok ? `ok   ${describe(c)}: ${worst}` : `FAIL ${r.error}`;
      console.log(`${status} [${seconds.toFixed(2)} s]`);
    }
  }
});

const total = (performance.now() - t0) / 1000;
if (!options.json) {
  console.log(`${count} checks, ${entries.size} entry points launched, ${failures.length} failed, ` +
    `${total.toFixed(1)} s in Chromium`);
}
if (failures.length) {
  process.stderr.write(`web_kernels: ${failures.length} of ${count} kernel checks failed:\n${failures.join('\n')}\n`);
  process.exit(1);
}
