#!/usr/bin/env bash
# The whole pipeline, offline, on a CPU: DAPT (stage 1) -> classifier (stage 2) -> evaluation on
# IMDb test and SST-2 validation -> a publishable Hub folder (dry run) -> predictions from it.
#
#   bash scripts/demo.sh                   # the demo budget: about 8 minutes on 2 idle CPU cores (+2 to set up .venv);
#                                          # a line before each step says what is left at the pace so far
#   DEMO_BUDGET=ci bash scripts/demo.sh    # the same steps on a tiny budget (a few minutes)
#
# Data: $DAPT_DATA_DIR, else ../shared/data, else the Hugging Face Hub (stanfordnlp/imdb, sst2).
# Outputs go to $DEMO_OUT (default runs/demo). Extra key=value overrides: DAPT_ARGS, CLASSIFY_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$PWD/.cache/datasets}"

OUT="${DEMO_OUT:-runs/demo}"
BUDGET="${DEMO_BUDGET:-full}"
DATA="${DAPT_DATA_DIR:-../shared/data}"
dapt_args=("output_dir=$OUT/dapt" "overwrite=true")  # a demo re-run replaces the previous one
classify_args=("output_dir=$OUT/classify" "overwrite=true" "model.encoder=$OUT/dapt")

if [ -f "$DATA/imdb/train.parquet" ]; then
    export DAPT_DATA_DIR="$(cd "$DATA" && pwd)" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    echo "data: $DAPT_DATA_DIR"
else
    echo "data: no local copy at $DATA; reading stanfordnlp/imdb and stanfordnlp/sst2 from the Hub"
    dapt_args+=("data.sources=[{path: stanfordnlp/imdb, kind: hub, splits: [train, unsupervised], max_documents: 3000}]")
    classify_args+=(
        "data.train.path=stanfordnlp/imdb" "data.eval.imdb_test.path=stanfordnlp/imdb"
        "data.eval.sst2_validation.path=stanfordnlp/sst2"
    )
fi

if [ "$BUDGET" = "ci" ]; then
    dapt_args+=("data.sources.0.max_documents=300" "data.heldout=30" "data.block_size=64"
                "train.head_warmup_steps=10" "train.max_steps=6" "train.eval_every=0" "train.log_every=2")
    classify_args+=("data.train.max_samples=160" "data.validation_size=40" "data.eval.imdb_test.max_samples=100"
                    "data.eval.sst2_validation.max_samples=100" "model.max_length=64" "model.head_tokens=16" "train.batch_size=16")
elif [ "$BUDGET" != "full" ]; then
    echo "DEMO_BUDGET must be full or ci, got '$BUDGET'" >&2
    exit 2
fi
# shellcheck disable=SC2206
dapt_args+=(${DAPT_ARGS:-})
# shellcheck disable=SC2206
classify_args+=(${CLASSIFY_ARGS:-})

# Seconds each step took on an idle 2-core machine (README, "Results"): the ETA lines scale
# what is left by the pace so far, so a busy machine (the same demo once took 21.5 min) gets a later ETA.
EXPECTED=(135 151 5 4)
STEPS=("stage 1 (DAPT)" "stage 2 (classifier + evaluation)" "publish (dry run)" "predict")
span() { if [ "$1" -lt 90 ]; then echo "$1 s"; else echo "$(( ($1 + 30) / 60 )) min"; fi; }
progress() {  # progress DONE_STEPS: elapsed, and an estimate of what is left at the pace so far
    local done=$1 now elapsed expected_done=0 expected_left=0 i
    now=$(date +%s); elapsed=$((now - start))
    for i in "${!EXPECTED[@]}"; do
        if [ "$i" -lt "$done" ]; then expected_done=$((expected_done + EXPECTED[i])); else expected_left=$((expected_left + EXPECTED[i])); fi
    done
    if [ "$BUDGET" = "full" ] && [ "$done" -lt "${#EXPECTED[@]}" ]; then
        local pace_left=$expected_left
        [ "$expected_done" -gt 0 ] && pace_left=$((expected_left * elapsed / expected_done))
        echo "-- [$done/${#STEPS[@]} done, $(span "$elapsed")] next: ${STEPS[$done]}; about $(span "$pace_left") left (idle machine: $(span "$expected_left"))"
    fi
}

start=$(date +%s)
progress 0
echo "== stage 1: domain-adaptive MLM on IMDb text (configs/demo/pretrain.yaml)"
[ -n "${SKIP_STAGE1:-}" ] || python -m dapt.pretrain --config configs/demo/pretrain.yaml "${dapt_args[@]}"
t1=$(date +%s)
progress 1
echo "== stage 2: classifier on the adapted encoder, evaluated on IMDb test and SST-2 (configs/demo/classify.yaml)"
python -m classify.train --config configs/demo/classify.yaml "${classify_args[@]}"
t2=$(date +%s)
progress 2
echo "== publish (dry run): the Hub folder"
dapt-publish "$OUT/classify" --repo-id "${DEMO_REPO_ID:-your-name/dapt-minilm-imdb-sentiment}" --folder "$OUT/hub" --dry-run
t3=$(date +%s)
progress 3
echo "== predict from the published folder: tricky sample reviews (scripts/demo_reviews.tsv holds their expected labels)"
tail -n +2 scripts/demo_reviews.tsv | cut -f2 > "$OUT/reviews.txt"
dapt-predict --model "$OUT/hub" --file "$OUT/reviews.txt" --jsonl | tee "$OUT/predictions.jsonl"
t4=$(date +%s)
python scripts/demo_report.py "$OUT" --expected scripts/demo_reviews.tsv --times "stage1=$((t1 - start))" \
    "stage2=$((t2 - t1))" "publish=$((t3 - t2))" "predict=$((t4 - t3))" "total=$((t4 - start))"
