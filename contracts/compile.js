#!/usr/bin/env node
// Compiles the contracts with npm solc (tools/node_modules) into build/<Name>.json
// {abi, bytecode, deployedBytecode}: TestUSDC.sol (the test token) and X402Settlement.sol (the
// batch settlement contract). Offline: imports resolve from tools/node_modules.
// Run via `make contracts` (which runs `make setup` first).
"use strict";
const fs = require("fs");
const path = require("path");

const here = __dirname;
const modules = path.resolve(here, "..", "tools", "node_modules");
const solc = require(path.join(modules, "solc"));

const contracts = [
  ["TestUSDC.sol", "TestUSDC"],
  ["X402Settlement.sol", "X402Settlement"],
];
const sources = {};
for (const [file] of contracts) {
  sources[file] = { content: fs.readFileSync(path.join(here, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

function findImports(p) {
  for (const base of [modules, here]) {
    const file = path.join(base, p);
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${p}` };
}

const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (out.errors || []).filter((e) => e.severity === "error");
for (const e of out.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

fs.mkdirSync(path.join(here, "build"), { recursive: true });
for (const [file, name] of contracts) {
  const c = out.contracts[file][name];
  const artefact = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
    deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  };
  fs.writeFileSync(path.join(here, "build", `${name}.json`), JSON.stringify(artefact, null, 2) + "\n");
  console.log(`wrote build/${name}.json (${solc.version()}, ${c.evm.deployedBytecode.object.length / 2} bytes runtime)`);
}
