#!/usr/bin/env bash
# Everything Table 1 needs, on a machine with internet (a login node is usually enough):
# the five DomainBed data sets, checked, and the CLIP ViT-B/16 weights (OpenAI) as one file.
#   scripts/download_all.sh /shared/domainbed /shared/weights
# Then on the compute nodes: export SAGE_BENCH_DATA=/shared/domainbed and pass
# backbone.pretrained=/shared/weights/open_clip_model.safetensors (or copy the Hugging Face cache).
set -euo pipefail
data_dir=${1:-data}
weights_dir=${2:-weights}

sage-bench download PACS VLCS OfficeHome TerraIncognita DomainNet --data-dir "$data_dir"
sage-bench data check all --data-dir "$data_dir" --workers "$(nproc)"
hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors --local-dir "$weights_dir"
echo "data in $data_dir, CLIP weights in $weights_dir/open_clip_model.safetensors"
