#!/usr/bin/env bash
# The real recipe on GPUs: stage 1 (DAPT) then stage 2 (classifier + evaluation), optional push.
#
#   bash scripts/run_pipeline.sh                       # DistilBERT, configs/pretrain.yaml + configs/classify.yaml
#   RECIPE=minilm bash scripts/run_pipeline.sh         # the stand-in encoder's recipe
#   ACCELERATE_CONFIG=configs/accelerate/multi_gpu.yaml bash scripts/run_pipeline.sh
#   PUSH_TO=your-name/dapt-distilbert-imdb bash scripts/run_pipeline.sh   # needs HF_TOKEN or `hf auth login`
set -euo pipefail
cd "$(dirname "$0")/.."
case "${RECIPE:-distilbert}" in
    distilbert) stage1=configs/pretrain.yaml; stage2=configs/classify.yaml ;;
    minilm) stage1=configs/pretrain-minilm.yaml; stage2=configs/classify-minilm.yaml ;;
    *) echo "RECIPE must be distilbert or minilm" >&2; exit 2 ;;
esac
launch=(accelerate launch)
if [ -n "${ACCELERATE_CONFIG:-}" ]; then
    launch+=(--config_file "$ACCELERATE_CONFIG")
fi
"${launch[@]}" dapt/pretrain.py --config "$stage1"
"${launch[@]}" classify/train.py --config "$stage2"
if [ -n "${PUSH_TO:-}" ]; then
    run_dir=$(python -c "from dapt.core.config import load_config; from classify.config import ClassifyConfig; print(load_config(ClassifyConfig, '$stage2').output_dir)")
    dapt-publish "$run_dir" --repo-id "$PUSH_TO"
fi
