#!/usr/bin/env bash
# Table 1 on one machine with one GPU: the jobs run one after another (`sage-bench reproduce
# table1 --dry-run` prints their number and an estimate of the GPU-hours). Stop it at any time
# (Ctrl-C saves a checkpoint); the same command resumes, and prints the table when all is done.
#   scripts/table1_single_gpu.sh /data/domainbed sweeps/table1
# On a machine with several GPUs, --launcher multi_gpu runs one job per GPU.
set -euo pipefail
data_dir=${1:?the folder with the five data sets}
output_dir=${2:-sweeps/table1}

sage-bench reproduce table1 --dry-run --output-dir "$output_dir"
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} \
    sage-bench reproduce table1 --data-dir "$data_dir" --output-dir "$output_dir" --launcher local
