#!/usr/bin/env python3
"""Pins the filter image in envoy/istio/wasmplugin.yaml to the digest of target/x402_filter.wasm.

  pin_filter_digest.py          rewrites the WasmPlugin's `url` tag and `sha256` in place
  pin_filter_digest.py --check  exits 1, naming both digests, when the committed ones differ

The WasmPlugin pulls `oci://.../x402-filter:<version>`; Istio compares its `sha256` with the
pulled image's manifest digest and refuses the plugin on a mismatch. That digest is the one
tools/oci_image.py computes from the .wasm alone (fixed timestamps and owners), so it is
known without building or pushing the image. The wasm build is reproducible (same source,
same toolchain: same bytes), which is what keeps a committed digest valid; a toolchain
update changes it, and `make test` (tools/check-manifests.sh) then says to re-run this.
"""
import os
import pathlib
import re
import subprocess
import sys
import tomllib

root = pathlib.Path(__file__).resolve().parent.parent
manifest = root / "envoy" / "istio" / "wasmplugin.yaml"
# The built filter; X402_FILTER_WASM overrides it, as for the tests (tests/src/paths.rs).
wasm = pathlib.Path(os.environ.get("X402_FILTER_WASM") or root / "target" / "x402_filter.wasm").resolve()


def main():
    check = "--check" in sys.argv[1:]
    if not wasm.is_file():
        sys.exit(f"[pin] {wasm} missing (run `make wasm`)")
    version = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    digest = subprocess.run(
        [sys.executable, str(root / "tools" / "oci_image.py"), "filter-digest", "--wasm", str(wasm)],
        check=True, capture_output=True, text=True).stdout.strip()
    hexdigest = digest.removeprefix("sha256:")
    text = manifest.read_text()
    url_re = re.compile(r"^(  url: oci://[^\s:@]+(?::\d+)?/[^\s:@]+):[^\s@]+$", re.M)
    sha_re = re.compile(r"^  sha256: \S+$", re.M)
    if len(url_re.findall(text)) != 1 or len(sha_re.findall(text)) != 1:
        sys.exit(f"[pin] {manifest.relative_to(root)}: expected one `  url: oci://HOST/NAME:TAG` "
                 "and one `  sha256: HEX` line in the WasmPlugin spec")
    pinned = url_re.sub(lambda m: f"{m.group(1)}:{version}", text)
    pinned = sha_re.sub(f"  sha256: {hexdigest}", pinned)
    if check:
        if pinned != text:
            committed = sha_re.search(text).group(0).split()[-1]
            sys.exit(f"[pin] {manifest.relative_to(root)} pins sha256 {committed} (or another tag), "
                     f"but {wasm} makes image {digest} (version {version}): "
                     "run `python3 tools/pin_filter_digest.py` and commit the result")
        print(f"[pin] {manifest.relative_to(root)}: pinned to the built filter, image {digest}")
        return
    if pinned != text:
        manifest.write_text(pinned)
    print(f"[pin] {manifest.relative_to(root)}: x402-filter:{version} sha256 {hexdigest}")


if __name__ == "__main__":
    main()
