#!/usr/bin/env bash
# make images: OCI image archives of the filter and the settler under target/images/, built
# offline, without a Docker daemon, reproducibly (same input, same digest).
#
#   target/images/x402-filter-<version>.oci.tar    Istio WasmPlugin image: one layer, plugin.wasm
#   target/images/x402-settler-<version>.oci.tar   FROM scratch: the binary, what it links, user 65532
#
# tools/oci_image.py writes them (why not buildah/podman/umoci: see its header). Then this
# script checks them with independent tools: skopeo reads each archive and its digest must be
# the one printed; umoci unpacks the settler image, whose binary must run from that root
# filesystem alone as uid 65532 (so nothing it links is missing); and a second build must
# give the same digests. It also pins the filter digest into envoy/istio/wasmplugin.yaml.
# Push with e.g. `skopeo copy oci-archive:target/images/x402-settler-0.1.0.oci.tar
# docker://registry.example.com/x402-settler:0.1.0`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/images
version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml","rb"))["workspace"]["package"]["version"])')
# X402_FILTER_WASM / X402_SETTLER_RELEASE_BIN: package artefacts built elsewhere instead.
wasm=${X402_FILTER_WASM:-target/x402_filter.wasm}
[ -f "$wasm" ] || { echo "[images] $wasm missing (make wasm)" >&2; exit 1; }
settler=${X402_SETTLER_RELEASE_BIN:-target/release/x402-settler}
[ -n "${X402_SETTLER_RELEASE_BIN:-}" ] || cargo build -q --release -p x402-settler

build() { # kind input archive -> the JSON line of tools/oci_image.py
  local kind=$1 input=$2 archive=$3 flag=--wasm
  [ "$kind" = settler ] && flag=--binary
  python3 tools/oci_image.py "$kind" "$flag" "$input" --tag "$version" --out "$archive"
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

mkdir -p "$out"
filter_json=$(build filter "$wasm" "$out/x402-filter-$version.oci.tar")
settler_json=$(build settler "$settler" "$out/x402-settler-$version.oci.tar")

# Reproducible: a second build, elsewhere, gives the same bytes.
again=$(mktemp -d)
trap 'rm -rf "$again"' EXIT
for kind in filter settler; do
  input=$wasm; [ $kind = settler ] && input=$settler
  first=$(field "$([ $kind = filter ] && echo "$filter_json" || echo "$settler_json")" digest)
  second=$(field "$(build $kind "$input" "$again/$kind.oci.tar")" digest)
  [ "$first" = "$second" ] || { echo "[images] $kind: not reproducible ($first, then $second)" >&2; exit 1; }
  cmp -s "$out/x402-$kind-$version.oci.tar" "$again/$kind.oci.tar" \
    || { echo "[images] $kind: the archives of two builds differ" >&2; exit 1; }
done

# Independent readers: skopeo (the digest of the manifest it reads), umoci (unpacks the
# settler image like a runtime would).
if command -v skopeo >/dev/null && command -v umoci >/dev/null; then
  for kind in filter settler; do
    archive="$out/x402-$kind-$version.oci.tar"
    want=$(field "$([ $kind = filter ] && echo "$filter_json" || echo "$settler_json")" digest)
    got=sha256:$(skopeo inspect --raw "oci-archive:$archive:$version" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "[images] $kind: skopeo reads manifest $got, expected $want" >&2; exit 1; }
  done
  mkdir -p "$again/layout" && tar -xf "$out/x402-settler-$version.oci.tar" -C "$again/layout"
  umoci unpack --image "$again/layout:$version" "$again/bundle" >/dev/null
  user=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["process"]["user"]["uid"], c["process"]["args"][0])' "$again/bundle/config.json")
  [ "$user" = "65532 /usr/local/bin/x402-settler" ] || { echo "[images] settler image runs as/with: $user" >&2; exit 1; }
  # Only what is in the image: chroot into its root filesystem as the image's user.
  if ! ran=$(chroot --userspec=65532:65532 "$again/bundle/rootfs" /usr/local/bin/x402-settler --version 2>&1); then
    echo "[images] the settler does not run from its image's root filesystem: $ran" >&2; exit 1
  fi
  ran=${ran%%$'\n'*}
  mkdir -p "$again/filter" && tar -xf "$out/x402-filter-$version.oci.tar" -C "$again/filter"
  umoci unpack --image "$again/filter:$version" "$again/fbundle" >/dev/null
  cmp -s "$again/fbundle/rootfs/plugin.wasm" "$wasm" || { echo "[images] filter image: plugin.wasm differs from $wasm" >&2; exit 1; }
  echo "[images] skopeo reads both digests; umoci unpacks both; the settler runs from its image as uid 65532 ($ran)"
else
  echo "[images] skopeo/umoci not installed (make setup): archives not cross-checked" >&2
fi

python3 tools/pin_filter_digest.py
printf '%-14s %-73s %10s %s\n' image digest bytes archive
for j in "$filter_json" "$settler_json"; do
  printf '%-14s %-73s %10s %s\n' "$(field "$j" image)" "$(field "$j" digest)" "$(field "$j" size)" "$(field "$j" archive)"
done
