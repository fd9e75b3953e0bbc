#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests against the real schemas, offline.

  validate_schemas.py FILE.yaml...

Core kinds (Deployment, Service, NetworkPolicy, PodDisruptionBudget, ...) against the
Kubernetes OpenAPI schemas shipped by PyPI kubernetes-validate, strictly: an unknown field
(a typo such as `replica:`) is an error, as `kubectl apply --validate=strict` makes it.
Istio (WasmPlugin, EnvoyFilter, DestinationRule) and Prometheus Operator (ServiceMonitor)
kinds against the schemas generated from their CRDs (npm @kubernetes-models/*, via
tools/validate_crds.mjs). A kind neither knows is an error, so nothing passes unchecked.
"""
import json
import pathlib
import subprocess
import sys

import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"  # the oldest Kubernetes release still supported upstream
CRD_GROUPS = ("extensions.istio.io/", "networking.istio.io/", "monitoring.coreos.com/")
tools = pathlib.Path(__file__).resolve().parent

problems, crds, checked = [], [], 0
for name in sys.argv[1:]:
    for i, doc in enumerate(yaml.safe_load_all(pathlib.Path(name).read_text())):
        if doc is None:
            continue
        where = f"{name}#{i} {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        if str(doc.get("apiVersion", "")).startswith(CRD_GROUPS):
            crds.append({"where": f"{name}#{i}", "doc": doc})
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no Kubernetes {K8S_VERSION} schema for {doc.get('apiVersion')} {doc.get('kind')}")

if crds:
    node = subprocess.run(["node", str(tools / "validate_crds.mjs")], input=json.dumps(crds),
                          text=True, capture_output=True, cwd=tools)
    sys.stderr.write(node.stderr)
    if node.returncode != 0 and not node.stderr.strip():
        problems.append(f"tools/validate_crds.mjs failed ({node.returncode}): {node.stdout}")
for p in problems:
    print(f"[schemas] {p}", file=sys.stderr)
if problems or (crds and node.returncode != 0):
    sys.exit(1)
print(f"[schemas] {checked} Kubernetes {K8S_VERSION} objects (strict) and {len(crds)} Istio / "
      "Prometheus Operator objects match their schemas", file=sys.stderr)
