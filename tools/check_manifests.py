#!/usr/bin/env python3
"""Offline checks of the Kubernetes and Istio manifests in envoy/ (no cluster needed).

Parses every YAML document and checks what kubectl would only find at apply time:
required fields, selectors that select, ports and Secret/ConfigMap references that exist.
Writes each WasmPlugin's pluginConfig, and the filter configuration embedded in each
EnvoyFilter wasm patch (a google.protobuf.StringValue holding JSON), as JSON files in the
output directory so the filter's own parser can check them
(`cargo run -q -p x402-filter --example check_config -- FILE.json`).
"""
import json
import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
out_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target" / "manifests"
out_dir.mkdir(parents=True, exist_ok=True)
errors = []
docs = []
for path in sorted((root / "envoy").rglob("*.yaml")):
    if path.parent == root / "envoy":
        continue  # plain Envoy configs are checked by `envoy --mode validate`
    try:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(root)}#{i}", doc))
    except yaml.YAMLError as e:
        errors.append(f"{path.relative_to(root)}: not valid YAML: {e}")

by_kind = {}
for where, d in docs:
    for field in ("apiVersion", "kind", "metadata"):
        if field not in d:
            errors.append(f"{where}: missing {field}")
    name = (d.get("metadata") or {}).get("name")
    if not name:
        errors.append(f"{where}: missing metadata.name")
    by_kind.setdefault(d.get("kind"), {})[(d.get("metadata") or {}).get("namespace"), name] = (where, d)

def has(kind, ns, name):
    return (ns, name) in by_kind.get(kind, {})

for (ns, name), (where, d) in by_kind.get("Deployment", {}).items():
    spec = d.get("spec", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        errors.append(f"{where}: spec.selector.matchLabels does not match the pod template labels")
    pod = spec.get("template", {}).get("spec", {})
    volumes = {v.get("name"): v for v in pod.get("volumes", [])}
    for c in pod.get("containers", []):
        if not c.get("image"):
            errors.append(f"{where}: container {c.get('name')} has no image")
        for ref in c.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in ref and not has(kind, ns, ref[key].get("name")):
                    errors.append(f"{where}: envFrom {kind} {ref[key].get('name')} not defined")
        for e in c.get("env", []):
            skr = (e.get("valueFrom") or {}).get("secretKeyRef")
            if skr:
                sec = by_kind.get("Secret", {}).get((ns, skr.get("name")))
                if not sec:
                    errors.append(f"{where}: env {e.get('name')}: Secret {skr.get('name')} not defined")
                elif skr.get("key") not in {**sec[1].get("data", {}), **sec[1].get("stringData", {})}:
                    errors.append(f"{where}: env {e.get('name')}: Secret key {skr.get('key')} not defined")
        for m in c.get("volumeMounts", []):
            if m.get("name") not in volumes:
                errors.append(f"{where}: volumeMount {m.get('name')} has no volume")
        port_names = {p.get("name") for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in port_names:
                errors.append(f"{where}: {probe} port {port} is not a container port name")
    for (sns, sname), (swhere, svc) in by_kind.get("Service", {}).items():
        if sns == ns and svc.get("spec", {}).get("selector") == sel:
            break
    else:
        errors.append(f"{where}: no Service selects this Deployment")

for (ns, name), (where, d) in by_kind.get("WasmPlugin", {}).items():
    spec = d.get("spec", {})
    if not spec.get("url"):
        errors.append(f"{where}: WasmPlugin has no spec.url")
    cfg = spec.get("pluginConfig")
    if not isinstance(cfg, dict):
        errors.append(f"{where}: WasmPlugin has no spec.pluginConfig object")
        continue
    target = out_dir / f"wasmplugin-{name}.json"
    target.write_text(json.dumps(cfg, indent=2))
    print(target)

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
plugin_configs = {}  # (namespace, name) -> (where, config) of each WasmPlugin
for (ns, name), (where, d) in by_kind.get("WasmPlugin", {}).items():
    cfg = (d.get("spec") or {}).get("pluginConfig")
    if isinstance(cfg, dict):
        plugin_configs[(ns, name)] = (where, cfg)

for (ns, name), (where, d) in by_kind.get("EnvoyFilter", {}).items():
    spec = d.get("spec") or {}
    if not (spec.get("workloadSelector") or {}).get("labels"):
        errors.append(f"{where}: EnvoyFilter has no spec.workloadSelector.labels (it would patch every proxy)")
    patches = spec.get("configPatches") or []
    if not patches:
        errors.append(f"{where}: EnvoyFilter has no spec.configPatches")
    found = 0
    for i, p in enumerate(patches):
        at = f"{where}: configPatches[{i}]"
        value = (p.get("patch") or {}).get("value") or {}
        tc = value.get("typed_config") or {}
        if tc.get("@type") != WASM_TYPE:
            continue
        if p.get("applyTo") != "HTTP_FILTER":
            errors.append(f"{at}: a wasm filter patch must apply to HTTP_FILTER")
        sub = ((((p.get("match") or {}).get("listener") or {}).get("filterChain") or {}).get("filter") or {}).get("subFilter") or {}
        if (p.get("patch") or {}).get("operation") != "INSERT_BEFORE" or sub.get("name") != "envoy.filters.http.router":
            errors.append(f"{at}: the wasm filter must be inserted before envoy.filters.http.router")
        conf = tc.get("config") or {}
        if conf.get("allow_on_headers_stop_iteration") is not True:
            errors.append(f"{at}: config.allow_on_headers_stop_iteration must be true (the token endpoint needs it)")
        code = ((conf.get("vm_config") or {}).get("code")) or {}
        if not ((code.get("local") or {}).get("filename") or (code.get("remote") or {}).get("sha256")):
            errors.append(f"{at}: vm_config.code needs local.filename, or remote with a sha256")
        configuration = conf.get("configuration") or {}
        if configuration.get("@type") != STRING_VALUE or not isinstance(configuration.get("value"), str):
            continue  # not a JSON-in-StringValue config: nothing to extract
        try:
            cfg = json.loads(configuration["value"])
        except ValueError as e:
            errors.append(f"{at}: configuration.value is not JSON: {e}")
            continue
        found += 1
        suffix = "" if found == 1 else f"-{found}"
        target = out_dir / f"envoyfilter-{name}{suffix}.json"
        target.write_text(json.dumps(cfg, indent=2))
        print(target)
        # The EnvoyFilter and the WasmPlugin of the same name are two ways to deploy one
        # filter: their configurations must not drift apart.
        twin = plugin_configs.get((ns, name))
        if twin and twin[1] != cfg:
            errors.append(f"{at}: configuration differs from {twin[0]} pluginConfig (keep them equal)")

if errors:
    print("\n".join(f"[manifests] {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"[manifests] {len(docs)} Kubernetes documents ok", file=sys.stderr)
