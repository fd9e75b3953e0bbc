#!/usr/bin/env python3
"""Offline checks of the Kubernetes and Istio manifests in envoy/ (no cluster needed).

Parses every YAML document and checks what kubectl would only find at apply time:
required fields, selectors that select, ports and Secret/ConfigMap references that exist.
And the trust boundary: the settler runs with --api-secret-file and --terms-file (files
mounted from a Secret / ConfigMap that has them), a NetworkPolicy selects the settler pods
and admits only listed sources, and every filter config takes the settler secret from the
VM environment (`settler.api_secret_env`, passed by the plugin), never inline (`api_secret`).
Writes each WasmPlugin's pluginConfig, and the filter configuration embedded in each
EnvoyFilter wasm patch (a google.protobuf.StringValue holding JSON), as JSON files in the
output directory so the filter's own parser can check them
(`x402-filter check-config FILE.json`).
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
# Kubernetes objects live in envoy/k8s and envoy/istio only: envoy/*.yaml are plain Envoy
# configs (checked by `envoy --mode validate`), other folders hold snippets that are not
# objects (envoy/observability: a stats_config fragment, Prometheus rules).
manifest_files = sorted(p for d in ("k8s", "istio") for p in (root / "envoy" / d).rglob("*.yaml"))
for path in manifest_files:
    if path.name == "kustomization.yaml":
        continue  # how to assemble the objects, not an object (rendered by check-manifests.sh)
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

def file_source(ns, pod, container, path):
    """The (kind, name, key) a mounted file comes from, or None."""
    volumes = {v.get("name"): v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = m.get("mountPath", "").rstrip("/")
        if not path.startswith(mount + "/"):
            continue
        rest = path[len(mount) + 1:]
        v = volumes.get(m.get("name")) or {}
        for kind, key, ref in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            src = v.get(key)
            if src is None:
                continue
            items = src.get("items")
            keys = [i.get("key") for i in items if i.get("path") == rest] if items else [rest]
            if keys:
                return kind, src.get(ref), keys[0]
    return None

def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

settler_pods = []  # (where, namespace, pod labels, container ports)
for (ns, name), (where, d) in by_kind.get("Deployment", {}).items():
    pod = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []):
        if "x402-settler" not in (c.get("image") or ""):
            continue
        labels = d.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        ports = {p.get("containerPort") for p in c.get("ports", [])}
        settler_pods.append((where, ns, labels, ports))
        args = [str(a) for a in (c.get("args") or [])]
        for flag, kind in (("--api-secret-file", "Secret"), ("--terms-file", "ConfigMap")):
            if flag not in args or args.index(flag) + 1 >= len(args):
                errors.append(f"{where}: the settler container has no `{flag} FILE` argument")
                continue
            path = args[args.index(flag) + 1]
            src = file_source(ns, pod, c, path)
            if not src:
                errors.append(f"{where}: {flag} {path} is not in a mounted Secret or ConfigMap")
                continue
            skind, sname, skey = src
            obj = by_kind.get(skind, {}).get((ns, sname))
            if skind != kind:
                errors.append(f"{where}: {flag} {path} comes from a {skind}, expected a {kind}")
            elif not obj:
                errors.append(f"{where}: {flag} {path}: {skind} {sname} not defined")
            elif skey not in {**obj[1].get("data", {}), **obj[1].get("stringData", {})}:
                errors.append(f"{where}: {flag} {path}: {skind} {sname} has no key {skey}")
        env_names = {e.get("name") for e in c.get("env", [])}
        if "X402_API_SECRET" in env_names:
            errors.append(f"{where}: the secret goes in a file (--api-secret-file), not the environment")

for where, ns, labels, ports in settler_pods:
    policies = [
        (pw, pd) for (pns, _), (pw, pd) in by_kind.get("NetworkPolicy", {}).items()
        if pns == ns and labels_match(((pd.get("spec") or {}).get("podSelector") or {}).get("matchLabels"), labels)
    ]
    if not policies:
        errors.append(f"{where}: no NetworkPolicy selects the settler pods (any pod could call it)")
    for pw, pd in policies:
        spec = pd.get("spec") or {}
        if "Ingress" not in (spec.get("policyTypes") or []):
            errors.append(f"{pw}: policyTypes must include Ingress")
        rules = spec.get("ingress") or []
        if not rules:
            errors.append(f"{pw}: no ingress rule: the settler would be unreachable, even by the gateway")
        for i, r in enumerate(rules):
            if not r.get("from"):
                errors.append(f"{pw}: ingress[{i}] has no `from`: it admits every source")
            for src in r.get("from") or []:
                if not src.get("podSelector") and not src.get("ipBlock"):
                    errors.append(f"{pw}: ingress[{i}] admits whole namespaces: select the pods")
            rule_ports = {p.get("port") for p in r.get("ports") or []}
            if not rule_ports:
                errors.append(f"{pw}: ingress[{i}] opens every port: list the settler port")
            elif not rule_ports & ports:
                errors.append(f"{pw}: ingress[{i}] ports {sorted(rule_ports)} are not the settler's {sorted(ports)}")
        gateway = any(
            ((src.get("podSelector") or {}).get("matchLabels") or {}).get("istio") == "ingressgateway"
            for r in rules for src in r.get("from") or []
        )
        if not gateway:
            errors.append(f"{pw}: no ingress rule admits the ingress gateway pods (istio: ingressgateway)")

def secret_env_of(where, cfg):
    """The settler.api_secret_env of a filter config (None if wrong, with an error)."""
    settler = cfg.get("settler") or {}
    if "api_secret" in settler:
        errors.append(f"{where}: settler.api_secret is inline: use settler.api_secret_env (the secret from the VM environment)")
    env = settler.get("api_secret_env")
    if not env:
        errors.append(f"{where}: settler.api_secret_env is not set: the settler refuses callers without its secret")
    return env

for (ns, name), (where, d) in by_kind.get("WasmPlugin", {}).items():
    spec = d.get("spec", {})
    env = secret_env_of(where, spec.get("pluginConfig") or {})
    vm_env = {e.get("name"): e for e in ((spec.get("vmConfig") or {}).get("env") or [])}
    if env and (vm_env.get(env) or {}).get("valueFrom") != "HOST":
        errors.append(f"{where}: spec.vmConfig.env has no {env} with valueFrom: HOST (the filter reads the secret from it)")
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
        env = secret_env_of(at, cfg)
        keys = (((conf.get("vm_config") or {}).get("environment_variables") or {}).get("host_env_keys")) or []
        if env and env not in keys:
            errors.append(f"{at}: vm_config.environment_variables.host_env_keys lacks {env} (the filter reads the secret from it)")
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

# Path normalisation and header names: every gateway that runs the filter (selected by a
# WasmPlugin or a wasm EnvoyFilter) must also get an EnvoyFilter merging these settings into
# its HTTP connection manager, as envoy/envoy.yaml sets them (see envoy/istio/hcm-hardening.yaml).
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ESCAPED_SLASHES_OK = ("UNESCAPE_AND_REDIRECT", "REJECT_REQUEST")

def hcm_problems(hcm):
    """What the HCM settings `hcm` lack (empty when hardened)."""
    out = []
    if hcm.get("normalize_path") is not True:
        out.append("normalize_path: true")
    if hcm.get("merge_slashes") is not True:
        out.append("merge_slashes: true")
    if hcm.get("path_with_escaped_slashes_action") not in ESCAPED_SLASHES_OK:
        out.append("path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT or REJECT_REQUEST")
    if ((hcm.get("common_http_protocol_options") or {}).get("headers_with_underscores_action")) != "REJECT_REQUEST":
        out.append("common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST")
    return out

def selector_of(d):
    spec = d.get("spec") or {}
    return ((spec.get("workloadSelector") or spec.get("selector") or {}).get("labels")
            or (spec.get("selector") or {}).get("matchLabels") or {})

filter_gateways = []  # (where, labels) of every deployment of the x402 filter
for (ns, name), (where, d) in by_kind.get("WasmPlugin", {}).items():
    filter_gateways.append((where, ns, selector_of(d)))
for (ns, name), (where, d) in by_kind.get("EnvoyFilter", {}).items():
    if any(((((p.get("patch") or {}).get("value") or {}).get("typed_config") or {}).get("@type")) == WASM_TYPE
           for p in (d.get("spec") or {}).get("configPatches") or []):
        filter_gateways.append((where, ns, selector_of(d)))

hardening = []  # (where, namespace, labels, problems) of each HCM patch
for (ns, name), (where, d) in by_kind.get("EnvoyFilter", {}).items():
    for i, p in enumerate((d.get("spec") or {}).get("configPatches") or []):
        flt = (((p.get("match") or {}).get("listener") or {}).get("filterChain") or {}).get("filter") or {}
        if p.get("applyTo") != "NETWORK_FILTER" or flt.get("name") != HCM_NAME:
            continue
        at = f"{where}: configPatches[{i}]"
        patch = p.get("patch") or {}
        tc = (patch.get("value") or {}).get("typed_config") or {}
        if patch.get("operation") != "MERGE" or tc.get("@type") != HCM_TYPE:
            errors.append(f"{at}: an HTTP connection manager patch must MERGE a typed_config of {HCM_TYPE}")
            continue
        problems = hcm_problems(tc)
        for m in problems:
            errors.append(f"{at}: the connection manager patch must set {m}")
        hardening.append((at, ns, selector_of(d), problems))

for where, ns, labels in filter_gateways:
    if not any(hns == ns and hlabels == labels for _, hns, hlabels, _ in hardening):
        errors.append(f"{where}: no EnvoyFilter hardens the HTTP connection manager of the same workloads "
                      f"({labels}): path normalisation and header-underscore rejection are missing "
                      "(envoy/istio/hcm-hardening.yaml)")

# The local Envoy config sets the same (its HCM, first listener).
local = root / "envoy" / "envoy.yaml"
try:
    boot = yaml.safe_load(local.read_text()) or {}
    hcms = [f.get("typed_config") or {}
            for l in (boot.get("static_resources") or {}).get("listeners") or []
            for c in l.get("filter_chains") or []
            for f in c.get("filters") or [] if f.get("name") == HCM_NAME]
    if not hcms:
        errors.append("envoy/envoy.yaml: no HTTP connection manager")
    for hcm in hcms:
        for m in hcm_problems(hcm):
            errors.append(f"envoy/envoy.yaml: the connection manager must set {m}")
except (OSError, yaml.YAMLError) as e:
    errors.append(f"envoy/envoy.yaml: cannot read: {e}")

if errors:
    print("\n".join(f"[manifests] {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"[manifests] {len(docs)} Kubernetes documents ok", file=sys.stderr)
