#!/usr/bin/env node
// Pays for a priced URL with the official x402 TypeScript client, `@x402/fetch` (with
// `@x402/evm`'s ExactEvmScheme over a viem local account), unchanged, and prints one JSON line:
//   {"status", "body", "payment_response", "requests", "accepted", "payer"[, "error"]}
// `payment_response` is the `PAYMENT-RESPONSE` header decoded by the package's own
// `decodePaymentResponseHeader` (null if absent); `requests` lists every request the wrapper
// sent (status, whether it carried PAYMENT-SIGNATURE); `accepted` is the requirement it paid.
// Exit 0 only if the final status is 200.
//
// Configuration is the package's public one (`wrapFetchWithPaymentFromConfig`):
//   schemes: [{network, client: new ExactEvmScheme(privateKeyToAccount(key))}]
//   spendControls: {allowedAssets: [{network, asset, maxAmountPerPayment}]}   (with --asset)
// Without --asset no spendControls are given: @x402/core then allows only the assets of its
// default table, so our local test token is refused before anything is signed.
//
// Usage:
//   X402_NODE_PRIVATE_KEY=0x... node tests/node/pay.mjs --url http://127.0.0.1:10000/api/weather \
//     --network eip155:31337 --asset 0x5FbD...0aa3 --max-amount 500000
//
// The packages are resolved from tools/node_modules (installed by tools/setup.sh), or from
// $X402_NODE_MODULES_DIR's parent. Only loopback URLs are fetched (an offline guard in front of
// the global fetch; the SDK itself is not modified).

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
const toolsDir = process.env.X402_NODE_MODULES_DIR
  ? path.dirname(process.env.X402_NODE_MODULES_DIR)
  : path.resolve(here, "../../tools");
// One module system for all three packages (their CommonJS builds), so @x402/fetch and
// @x402/evm share one @x402/core instance.
const require = createRequire(path.join(toolsDir, "package.json"));
const { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } = require("@x402/fetch");
const { ExactEvmScheme } = require("@x402/evm");
const { privateKeyToAccount } = require("viem/accounts");

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    network: { type: "string", default: "eip155:31337" },
    asset: { type: "string" },
    "max-amount": { type: "string" },
    "allow-non-loopback": { type: "boolean", default: false },
  },
});
if (!args.url) {
  console.error("--url is required");
  process.exit(2);
}
const key = (process.env.X402_NODE_PRIVATE_KEY || "").trim();
if (!/^0x[0-9a-fA-F]{64}$/.test(key)) {
  console.error("set X402_NODE_PRIVATE_KEY to the payer's private key (0x + 64 hex digits)");
  process.exit(2);
}
const account = privateKeyToAccount(key);

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);
const requests = [];
// Sits under the SDK's wrapper: records each request it sends and refuses non-loopback ones.
async function recordingFetch(input, init) {
  const request = new Request(input, init);
  const host = new URL(request.url).hostname;
  if (!args["allow-non-loopback"] && !LOOPBACK.has(host)) {
    throw new Error(`offline guard: refused request to ${host}`);
  }
  const entry = {
    method: request.method,
    url: request.url,
    payment_signature: request.headers.get("payment-signature"),
  };
  requests.push(entry);
  const response = await fetch(request);
  entry.status = response.status;
  return response;
}

const config = {
  schemes: [{ network: args.network, client: new ExactEvmScheme(account) }],
};
if (args.asset) {
  const entry = { network: args.network, asset: args.asset };
  if (args["max-amount"]) entry.maxAmountPerPayment = args["max-amount"];
  config.spendControls = { allowedAssets: [entry] };
}
const fetchWithPayment = wrapFetchWithPaymentFromConfig(recordingFetch, config);

function decodeB64Json(value) {
  if (!value) return null;
  try {
    return JSON.parse(Buffer.from(value, "base64").toString("utf8"));
  } catch (e) {
    return { undecodable: value, error: String(e) };
  }
}

const result = {};
try {
  const response = await fetchWithPayment(args.url);
  result.status = response.status;
  result.body = await response.text();
  const header = response.headers.get("payment-response");
  result.payment_response = header ? decodePaymentResponseHeader(header) : null;
  result.access_token = response.headers.get("x-x402-access-token") !== null;
  result.settlement_id = response.headers.get("x-x402-settlement-id");
} catch (e) {
  const last = requests[requests.length - 1] || {};
  result.status = last.status ?? null;
  result.body = "";
  result.payment_response = null;
  result.error = e instanceof Error ? e.message : String(e);
}
const paid = requests.filter((r) => r.payment_signature);
result.accepted = paid.length ? decodeB64Json(paid[paid.length - 1].payment_signature)?.accepted ?? null : null;
result.requests = requests.map((r) => ({
  method: r.method,
  url: r.url,
  status: r.status ?? null,
  payment_signature: r.payment_signature !== null,
}));
result.payer = account.address;
console.log(JSON.stringify(result));
process.exit(result.status === 200 ? 0 : 1);
