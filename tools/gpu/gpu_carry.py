"""What travels to the device machine, and how it is unpacked there (``tools/gpu/pack.sh``, docs/gpu.md).

A device call carries at most 64 MiB (working tree + carried folders). The stand-in's weights
(91 MB of fp32) plus IMDb (56 MB) do not fit one call, so everything is packed **losslessly** and
split over two calls; a warm machine keeps ``/tmp`` between them:

* data: the parquet files rewritten with zstd level 19 and large pages (same rows, same values:
  checked on writing);
* encoder: ``model.safetensors`` as four byte planes (byte k of every 4-byte word; the sign and
  exponent plane compresses about 3x), zstd-compressed, in one blob whose two pieces go in the two
  calls; unpacking rebuilds the file byte for byte and checks its SHA-256;
* wheels: the packages the device's image lacks (``tools/gpu/pack.sh`` downloads them).

    python tools/gpu/gpu_carry.py pack-data SRC_DATA DEST_DATA
    python tools/gpu/gpu_carry.py pack-encoder ENCODER_DIR BLOB_DIR      # -> encoder.json + encoder.blob
    python tools/gpu/gpu_carry.py split CALL1 CALL2 [--tree-bytes N]    # balance the blob over the calls, check the limit
    python tools/gpu/gpu_carry.py stage CARRIED_DIR /tmp/dapt-gpu        # on the device: unpack what this call carried
    python tools/gpu/gpu_carry.py plan SRC_DATA ENCODER_DIR             # estimated sizes, nothing written
    python tools/gpu/gpu_carry.py wheels                                 # name==version of the wheels to carry
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

LIMIT = 64 * 2**20  # one device call: working tree + carried paths
MARGIN = 2 * 2**20  # headroom for files the working tree gains before the call
DATA_FILES = ("imdb/train.parquet", "imdb/test.parquet", "imdb/unsupervised.parquet", "sst2/validation.parquet")
ENCODER_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PLANE_LEVELS = (3, 3, 3, 19)  # bytes 0-2 (mantissa) hardly compress; byte 3 (sign, exponent) does
PAGE_BYTES = 64 * 2**20


def _codec(level: int = 3):
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=level)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pack_data(source: Path, dest: Path) -> dict:
    import pyarrow.parquet as pq

    sizes = {}
    for name in DATA_FILES:
        table = pq.read_table(source / name)
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dest / name, compression="zstd", compression_level=19, row_group_size=max(1, len(table)),
                       data_page_size=PAGE_BYTES)
        if not pq.read_table(dest / name).equals(table):
            raise SystemExit(f"gpu_carry: {dest / name} does not read back equal to {source / name}")
        sizes[name] = (dest / name).stat().st_size
        print(f"data {name}: {(source / name).stat().st_size / 2**20:.1f} -> {sizes[name] / 2**20:.1f} MiB", flush=True)
    return sizes


def _split_safetensors(raw: bytes) -> tuple[bytes, bytes]:
    header = 8 + int.from_bytes(raw[:8], "little")
    return raw[:header], raw[header:]


def pack_encoder(encoder: Path, dest: Path) -> dict:
    """``dest/encoder.json`` (small files inline, plane sizes, checksum) and ``dest/encoder.blob``."""
    import numpy as np

    raw = (encoder / "model.safetensors").read_bytes()
    prefix, body = _split_safetensors(raw)
    if len(body) % 4:
        raise SystemExit(f"gpu_carry: {encoder / 'model.safetensors'}: tensor data is not a whole number of 4-byte words")
    words = np.frombuffer(body, dtype=np.uint8).reshape(-1, 4)
    frames, plane_sizes = [], []
    for k, level in enumerate(PLANE_LEVELS):
        plane = np.ascontiguousarray(words[:, k]).tobytes()
        frames.append(_codec(level).compress(plane, asbytes=True))
        plane_sizes.append([len(plane), len(frames[-1])])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "encoder.blob").write_bytes(b"".join(frames))
    manifest = {"sha256": sha256(encoder / "model.safetensors"), "prefix_hex": prefix.hex(), "planes": plane_sizes,
                "files": {name: (encoder / name).read_text() for name in ENCODER_SMALL_FILES if (encoder / name).is_file()}}
    (dest / "encoder.json").write_text(json.dumps(manifest))
    print(f"encoder: {len(raw) / 2**20:.1f} MiB -> {(dest / 'encoder.blob').stat().st_size / 2**20:.1f} MiB (lossless)", flush=True)
    return manifest


def unpack_encoder(manifest_path: Path, pieces: list[Path], target: Path) -> Path:
    import numpy as np

    manifest = json.loads(manifest_path.read_text())
    blob = b"".join(piece.read_bytes() for piece in pieces)
    planes, offset = [], 0
    for size, packed in manifest["planes"]:
        planes.append(np.frombuffer(_codec().decompress(blob[offset:offset + packed], decompressed_size=size, asbytes=True), dtype=np.uint8))
        offset += packed
    body = np.stack(planes, axis=1).tobytes()
    target.mkdir(parents=True, exist_ok=True)
    for name, text in manifest["files"].items():
        (target / name).write_text(text)
    out = target / "model.safetensors"
    out.write_bytes(bytes.fromhex(manifest["prefix_hex"]) + body)
    if sha256(out) != manifest["sha256"]:
        out.unlink()
        raise SystemExit("gpu_carry: the rebuilt model.safetensors does not match the original's SHA-256")
    return out


# the Python packages of the device's image (docs of the device tool, KINDS.md, read 2026-11-17)
DEVICE_HAS = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec h11 hf-xet httpcore httpx
huggingface-hub idna jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib mdurl mpmath multidict networkx numpy
packaging pandas pillow pip pluggy propcache protobuf psutil pyarrow pygments pyparsing python-dateutil pytz pyyaml regex
requests rich safetensors scikit-learn scipy sentencepiece setuptools shellingham six sympy threadpoolctl tokenizers torch
tqdm transformers triton typer typing-extensions tzdata urllib3 wheel xxhash yarl""".split())
CARRIED = ("datasets", "omegaconf")  # what the product needs and the image lacks


def wheel_list() -> list[str]:
    """``name==version`` of the carried packages and of every requirement of theirs the image
    lacks, at the versions installed here (the ones the tests ran with)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    wanted, queue = {}, list(CARRIED)
    while queue:
        name = canonicalize_name(queue.pop())
        if name in wanted or name in DEVICE_HAS:
            continue
        wanted[name] = metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                queue.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(wanted.items())]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def split(call1: Path, call2: Path, tree_bytes: int) -> dict:
    """Move the blob's bytes so that both calls weigh about the same, then check each against the limit."""
    blob = call1 / "encoder" / "encoder.blob"
    fixed1, fixed2 = folder_bytes(call1) - blob.stat().st_size, folder_bytes(call2)
    data = blob.read_bytes()
    first = max(0, min(len(data), (fixed2 + len(data) - fixed1) // 2))
    (call1 / "encoder" / "encoder.blob.1").write_bytes(data[:first])
    (call2 / "encoder").mkdir(parents=True, exist_ok=True)
    (call2 / "encoder" / "encoder.blob.2").write_bytes(data[first:])
    blob.unlink()
    return check(call1, call2, tree_bytes)


def check(call1: Path, call2: Path, tree_bytes: int) -> dict:
    sizes = {"call1": folder_bytes(call1) + tree_bytes, "call2": folder_bytes(call2) + tree_bytes, "tree": tree_bytes,
             "limit": LIMIT, "margin": MARGIN}
    for call in ("call1", "call2"):
        print(f"{call}: {sizes[call] / 2**20:.2f} MiB with the working tree ({tree_bytes / 2**20:.2f} MiB); limit 64 MiB")
    over = [call for call in ("call1", "call2") if sizes[call] > LIMIT - MARGIN]
    if over:
        raise SystemExit(f"gpu_carry: {', '.join(over)} over the carry limit (64 MiB less a {MARGIN >> 20} MiB margin): {sizes}")
    return sizes


def plan(source: Path, encoder: Path, tree_bytes: int, wheel_bytes: int, sample: int = 4 << 20) -> dict:
    """Estimated call sizes without writing anything: each data file and each byte plane of the
    weights compressed from a sample (the same codec and level), scaled to the whole."""
    import numpy as np
    import pyarrow.parquet as pq

    data = 0
    for name in DATA_FILES:
        table = pq.read_table(source / name)
        column = table.column(0).to_pylist()
        text = "\n".join(column).encode()
        chunk = text[:sample]
        data += len(text) * len(_codec(19).compress(chunk, asbytes=True)) / max(1, len(chunk))
    _, body = _split_safetensors((encoder / "model.safetensors").read_bytes())
    words = np.frombuffer(body, dtype=np.uint8).reshape(-1, 4)
    rng = np.random.default_rng(0)
    start = int(rng.integers(0, max(1, len(words) - sample)))
    weights = 0.0
    for k, level in enumerate(PLANE_LEVELS):
        part = np.ascontiguousarray(words[start:start + sample, k]).tobytes()
        weights += len(words) * len(_codec(level).compress(part, asbytes=True)) / len(part)
    small = sum((encoder / n).stat().st_size for n in ENCODER_SMALL_FILES if (encoder / n).is_file())
    total = data + weights + small + wheel_bytes
    per_call = total / 2 + tree_bytes
    estimate = {"data": int(data), "encoder": int(weights), "encoder_small_files": small, "wheels": wheel_bytes,
                "tree": tree_bytes, "per_call": int(per_call), "limit": LIMIT, "margin": MARGIN}
    print(json.dumps({k: f"{v / 2**20:.2f} MiB" for k, v in estimate.items()}))
    if per_call > LIMIT - MARGIN:
        raise SystemExit(f"gpu_carry: the estimated calls ({per_call / 2**20:.1f} MiB each) exceed the carry limit")
    return estimate


def stage(carried: Path, root: Path) -> None:
    """On the device: copy this call's data and wheels' companions under ``root`` (kept in /tmp while
    the machine is warm) and, once both pieces of the weights are there, rebuild them."""
    root.mkdir(parents=True, exist_ok=True)
    if (carried / "data").is_dir():
        shutil.copytree(carried / "data", root / "data", dirs_exist_ok=True)
    pieces = root / "encoder-pieces"
    pieces.mkdir(exist_ok=True)
    for path in sorted((carried / "encoder").glob("*")) if (carried / "encoder").is_dir() else []:
        shutil.copy2(path, pieces / path.name)
    manifest = pieces / "encoder.json"
    found = sorted(pieces.glob("encoder.blob.*"))
    if not manifest.is_file():
        raise SystemExit(f"gpu_carry: {manifest} missing: call 1's files are gone (was the machine given back?): run call 1 again")
    # the tokenizer and config at once (the bench and the smoke part need only those); the weights when complete
    target = root / "encoder"
    target.mkdir(exist_ok=True)
    for name, text in json.loads(manifest.read_text())["files"].items():
        (target / name).write_text(text)
    if len(found) == 2 and not (target / "model.safetensors").is_file():
        unpack_encoder(manifest, found, target)
        print(f"gpu_carry: {target / 'model.safetensors'} rebuilt, SHA-256 matches", flush=True)
    missing = [name for name in DATA_FILES if not (root / "data" / name).is_file()]
    print(f"gpu_carry: staged under {root}; data {'complete' if not missing else 'missing ' + ', '.join(missing)}; "
          f"weights {'ready' if (target / 'model.safetensors').is_file() else f'{len(found)} of 2 pieces'}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, args in {"pack-data": ("source", "dest"), "pack-encoder": ("encoder", "dest"), "split": ("call1", "call2"),
                       "check": ("call1", "call2"), "stage": ("carried", "root"), "plan": ("source", "encoder"),
                       "wheels": ()}.items():
        command = sub.add_parser(name)
        for arg in args:
            command.add_argument(arg, type=Path)
        if name in ("split", "check", "plan"):
            command.add_argument("--tree-bytes", type=int, default=0, help="the working tree that travels with every call")
        if name == "plan":
            command.add_argument("--wheel-bytes", type=int, default=0)
    a = p.parse_args(argv)
    if a.command == "pack-data":
        pack_data(a.source, a.dest)
    elif a.command == "pack-encoder":
        pack_encoder(a.encoder, a.dest)
    elif a.command == "split":
        split(a.call1, a.call2, a.tree_bytes)
    elif a.command == "check":
        check(a.call1, a.call2, a.tree_bytes)
    elif a.command == "stage":
        stage(a.carried, a.root)
    elif a.command == "wheels":
        print("\n".join(wheel_list()))
    else:
        plan(a.source, a.encoder, a.tree_bytes, a.wheel_bytes)


if __name__ == "__main__":
    sys.exit(main())
