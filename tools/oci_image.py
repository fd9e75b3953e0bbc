#!/usr/bin/env python3
"""Writes OCI image archives byte for byte, with nothing but the Python standard library.

Why not buildah/podman/umoci: no Docker daemon runs here, and the images are FROM scratch
with a handful of files, so the whole image is a tar layer, two small JSON documents and an
index. Writing them directly needs no container storage (buildah and podman need overlay or
vfs storage plus mount privileges) and fixes every byte that would otherwise vary between
builds: file order (sorted), owners (0:0, or 65532 where stated), modes, every timestamp
(the epoch, 0, as ko and rules_oci do: the digest then depends on the content only), the
gzip header (no name, mtime 0) and the JSON (sorted keys, no spaces). Same input, same
digest. tools/images.sh checks the result with independent tools (skopeo, umoci).

  oci_image.py filter  --wasm FILE   --tag T --out ARCHIVE   the Istio WasmPlugin image
  oci_image.py settler --binary FILE --tag T --out ARCHIVE   the settler image
  oci_image.py filter-digest --wasm FILE                     prints the filter image digest

Each build prints one JSON line: {"image", "archive", "digest", "size", "layer_size"}.

The filter image is the layout Istio's WasmPlugin pulls from an `oci://` url (its "compat"
variant, as coraza-proxy-wasm and Kuadrant publish): one layer holding `plugin.wasm`.
Istio compares a WasmPlugin's `sha256` with the image (manifest) digest printed here.
The settler image: the binary, the shared libraries it links (from ldd), the CA bundle
(its RPC client verifies TLS with the system roots), /etc/passwd and /etc/group naming the
non-root user 65532 it runs as.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"
NONROOT = 65532
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SOURCE = "https://example.invalid/x402-edge"  # no public repository yet


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layer:
    """A tar layer built in memory; entries are sorted by path when written."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def _info(self, path, kind, mode, uid=0):
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = kind, mode, EPOCH
        info.uid = info.gid = uid
        info.uname = info.gname = ""
        return info

    def add_dirs(self, path):
        parts = pathlib.PurePosixPath(path).parts[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.entries.setdefault(d, (self._info(d, tarfile.DIRTYPE, 0o755), None))

    def add_file(self, path, data, mode=0o644):
        path = path.lstrip("/")
        self.add_dirs(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def add_symlink(self, path, target):
        path = path.lstrip("/")
        self.add_dirs(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path] = (info, None)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def gzipped(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(data)
    return buf.getvalue()


def image(layer, config_extra, title):
    """The blobs of a one-layer image: (manifest bytes, {digest: bytes}, layer size). The tag
    is in the index only, so the digest depends on the files alone."""
    tar = layer.tar()
    blob = gzipped(tar)
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": config_extra,
        "rootfs": {"type": "layers", "diff_ids": [sha(tar)]},
        "history": [{"created": CREATED, "created_by": f"tools/oci_image.py ({title})"}],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER, "digest": sha(blob), "size": len(blob)}],
        "annotations": {
            "org.opencontainers.image.title": title,
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.created": CREATED,
        },
    }
    manifest_bytes = canonical(manifest)
    blobs = {sha(b): b for b in (manifest_bytes, config_bytes, blob)}
    return manifest_bytes, blobs, len(blob)


def write_archive(out, manifest_bytes, blobs, tag):
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as one tar: the
    `oci-archive:` format skopeo, podman and buildah read."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": sha(manifest_bytes),
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }
    files = {"oci-layout": canonical({"imageLayoutVersion": "1.0.0"}), "index.json": canonical(index)}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    layout = Layer()
    for path, data in files.items():
        layout.add_file(path, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(layout.tar())
    tmp.replace(out)


def filter_layer(wasm):
    data = wasm.read_bytes()
    if not data.startswith(b"\0asm"):
        sys.exit(f"[images] {wasm} is not a WebAssembly module (run `make wasm`)")
    layer = Layer()
    layer.add_file("plugin.wasm", data)
    return layer


def linked_libraries(binary):
    """(path the loader opens, real file) of every shared library `binary` links, and the
    dynamic loader itself, from ldd."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []  # static: nothing to copy
        sys.exit(f"[images] ldd {binary} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            path = line.split("=>", 1)[1].split("(", 1)[0].strip()
        else:
            path = line.split("(", 1)[0].strip()
        if not path.startswith("/"):
            continue  # linux-vdso.so.1: provided by the kernel
        if "not found" in line:
            sys.exit(f"[images] {binary} links a library that is not installed: {line}")
        libs.append(path)
    return libs


def settler_layer(binary):
    layer = Layer()
    layer.add_file("usr/local/bin/x402-settler", binary.read_bytes(), 0o755)
    for lib in linked_libraries(binary):
        real = pathlib.Path(lib).resolve()
        layer.add_file(lib, real.read_bytes(), 0o755)
    # The RPC client (rustls with the platform verifier) reads the system CA roots.
    layer.add_file("etc/ssl/certs/ca-certificates.crt",
                   pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    layer.add_file("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
                   f"x402:x:{NONROOT}:{NONROOT}:x402 settler:/nonexistent:/sbin/nologin\n".encode())
    layer.add_file("etc/group", f"root:x:0:\nx402:x:{NONROOT}:\n".encode())
    return layer


def settler_config():
    return {
        "User": f"{NONROOT}:{NONROOT}",
        "Entrypoint": ["/usr/local/bin/x402-settler"],
        "ExposedPorts": {"8402/tcp": {}},
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.source": SOURCE},
    }


def report(name, out, manifest_bytes, layer_size):
    print(json.dumps({"image": name, "archive": str(out), "digest": sha(manifest_bytes),
                      "size": out.stat().st_size, "layer_size": layer_size}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["filter", "settler", "filter-digest"])
    p.add_argument("--wasm", type=pathlib.Path)
    p.add_argument("--binary", type=pathlib.Path)
    p.add_argument("--tag", default="0.1.0")
    p.add_argument("--out", type=pathlib.Path)
    a = p.parse_args()
    if a.kind in ("filter", "filter-digest"):
        if not a.wasm or not a.wasm.is_file():
            sys.exit(f"[images] --wasm {a.wasm}: no such file (run `make wasm`)")
        manifest_bytes, blobs, layer_size = image(filter_layer(a.wasm), {}, "x402-filter")
        if a.kind == "filter-digest":
            print(sha(manifest_bytes))
            return
        name = "x402-filter"
    else:
        if not a.binary or not a.binary.is_file():
            sys.exit(f"[images] --binary {a.binary}: no such file")
        manifest_bytes, blobs, layer_size = image(settler_layer(a.binary), settler_config(),
                                                  "x402-settler")
        name = "x402-settler"
    if not a.out:
        sys.exit("[images] --out ARCHIVE is required")
    write_archive(a.out, manifest_bytes, blobs, a.tag)
    report(name, a.out, manifest_bytes, layer_size)


if __name__ == "__main__":
    os.umask(0o022)
    main()
