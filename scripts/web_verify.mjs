#!/usr/bin/env node
// `vit-wgpu verify` in headless Chromium: each parity fixture (scripts/make_*_fixture.py)
// runs forward and backward through the training code path on the page's WebGPU and is
// compared with PyTorch's logits, loss and every gradient at the CLI's default tolerances.
// Prints one line per tensor; exits 1 naming every tensor over its tolerance.
//   node scripts/web_verify.mjs FIXTURE.safetensors... [--json]
import { existsSync } from 'node:fs';
import { fail as failIn, withPage } from './web_common.mjs';

const fail = (text) => failIn('web_verify', text);
const args = process.argv.slice(2);
const json = args.includes('--json');
const files = args.filter((a) => a !== '--json');
if (files.length === 0) fail('give at least one fixture file');
for (const f of files) if (!existsSync(f)) fail(`${f} not found`);

const reports = await withPage('web_verify', files, undefined, (page) => page.evaluate(async (files) => {
  const out = [];
  for (let i = 0; i < files.length; i++) {
    const t0 = performance.now();
    try {
      const r = await window.vitWeb.verifyUrl(`/__input/${i}`, files[i]);
      out.push({ file: files[i], seconds: (performance.now() - t0) / 1000, ...r });
    } catch (e) {
      out.push({ file: files[i], passed: false, error: e instanceof Error ? e.message : String(e) });
    }
  }
  return out;
}, files));

const failures = [];
for (const r of reports) {
  if (json) {
    console.log(JSON.stringify(r));
  } else if (r.error) {
    console.log(`${r.file}: error: ${r.error}`);
  } else {
    console.log(`${r.file}: ${r.config} (batch ${r.batch}, ${r.seconds.toFixed(1)} s in Chromium)`);
    const k = r.kernels;
    console.log(`  kernels: gemm ${k.gemm}, attention ${k.attention}, ` +
      `texture reads ${k.texture_reads ? 'on' : 'off'}`);
    for (const c of r.comparisons) {
      console.log(`  ${c.name.padEnd(40)} ${c.relative_error.toExponential(3).padStart(12)} ` +
        `${c.tolerance.toExponential(0).padStart(10)}  [${c.worst_index}] ${c.ours} vs ${c.expected}` +
        `${c.passed ? '' : '  FAIL'}`);
    }
  }
  if (r.error) failures.push(`${r.file}: ${r.error}`);
  for (const c of r.comparisons ?? []) {
    if (!c.passed) failures.push(`${r.file}: ${c.name}: relative error ${c.relative_error} > ${c.tolerance}`);
  }
}
if (failures.length) {
  process.stderr.write(`web_verify: ${failures.length} failure(s):\n${failures.join('\n')}\n`);
  process.exit(1);
}
