// Runs the verification microbenchmark's wasm module in V8 (node's, the engine Envoy
// embeds for proxy-wasm): time per token check for each algorithm, as a ratio to ES256K
// of the same run. `node run.mjs <module.wasm> [iterations]`; prints JSON on the last line.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [path, itersArg] = process.argv.slice(2);
const n = Number(itersArg ?? 1000);
const ALGS = ["ES256K", "ES256", "EdDSA", "parse-only"];

const wasi = new WASI({ version: "preview1", args: [], env: {} });
const { instance } = await WebAssembly.instantiate(await readFile(path), wasi.getImportObject());
wasi.initialize?.(instance);
const { verify_loop, token_bytes } = instance.exports;

const perCheck = [];
for (let alg = 0; alg < ALGS.length; alg++) {
  // Warm-up (lets V8 tier up to TurboFan, as a long-lived Envoy worker has), then the
  // median of 5 rounds.
  verify_loop(alg, Math.max(50, n / 5));
  const rounds = [];
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    const ok = verify_loop(alg, n);
    const ns = Number(process.hrtime.bigint() - t) / n;
    if (ok !== n) throw new Error(`${ALGS[alg]}: ${ok} of ${n} checked out`);
    rounds.push(ns);
  }
  rounds.sort((a, b) => a - b);
  perCheck.push(rounds[2]);
}
console.log(`wasm in V8 (node ${process.version}): ns per token check (median of 5 rounds of ${n}), ratio to ES256K`);
const rows = ALGS.map((name, i) => ({
  alg: name,
  ns: Math.round(perCheck[i]),
  ratio_to_es256k: Number((perCheck[i] / perCheck[0]).toFixed(3)),
  token_bytes: token_bytes(i),
}));
for (const r of rows) {
  console.log(`${r.alg.padEnd(10)} ${String(r.ns).padStart(10)} ns  x${r.ratio_to_es256k.toFixed(3)}  (${r.token_bytes} bytes)`);
}
console.log(JSON.stringify({ engine: `node ${process.version} V8 ${process.versions.v8}`, iterations: n, rows }));
