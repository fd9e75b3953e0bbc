#!/usr/bin/env node
// Compiles TestUSDC.sol with npm solc (tools/node_modules) into build/TestUSDC.json
// {abi, bytecode, deployedBytecode}. Offline: imports resolve from tools/node_modules.
// Run via `make contracts` (which runs `make setup` first).
"use strict";
const fs = require("fs");
const path = require("path");

const here = __dirname;
const modules = path.resolve(here, "..", "tools", "node_modules");
const solc = require(path.join(modules, "solc"));

const source = "TestUSDC.sol";
const input = {
  language: "Solidity",
  sources: { [source]: { content: fs.readFileSync(path.join(here, source), "utf8") } },
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

const c = out.contracts[source].TestUSDC;
const artefact = {
  contractName: "TestUSDC",
  compiler: `solc ${solc.version()}`,
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
};
fs.mkdirSync(path.join(here, "build"), { recursive: true });
fs.writeFileSync(path.join(here, "build", "TestUSDC.json"), JSON.stringify(artefact, null, 2) + "\n");
console.log(`wrote build/TestUSDC.json (${solc.version()}, ${c.evm.deployedBytecode.object.length / 2} bytes runtime)`);
