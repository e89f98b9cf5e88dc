#!/usr/bin/env bash
# Table 1 on a SLURM cluster: every job as an array task on one GPU (or MIG slice). Run it on
# the login node; run it again later to resume what is unfinished and, once all is done, print
# the table beside the paper's and write results/table1/.
#   PARTITION=gpu ACCOUNT=mylab GRES=gpu:3g.40gb:1 scripts/table1_slurm.sh /shared/domainbed /shared/sweeps/table1
# The data and the output folder must be on a file system the compute nodes share; compute
# nodes without internet need the CLIP weights in their Hugging Face cache (scripts/download_all.sh).
set -euo pipefail
data_dir=${1:?the folder with the five data sets}
output_dir=${2:?the sweep folder (shared with the compute nodes)}

sage-bench reproduce table1 --data-dir "$data_dir" --output-dir "$output_dir" --launcher slurm \
    launcher.partition="${PARTITION:?set PARTITION}" \
    ${ACCOUNT:+launcher.account="$ACCOUNT"} \
    launcher.gres="${GRES:-gpu:1}" \
    launcher.timeout_min="${TIMEOUT_MIN:-240}" \
    launcher.cpus_per_task="${CPUS:-8}" launcher.mem_gb="${MEM_GB:-32}" \
    launcher.array_parallelism="${PARALLEL:-64}"
