#!/bin/bash
# Stage one on a Slurm cluster, as `make features` runs it on one machine: an extraction array
# of TASKS tasks, the index, an augmentation array of the train split (AUGMENT=0 skips it) and
# the index again with a check of every shard, each job starting when the one before succeeded.
#   scripts/slurm/submit_features.sh [TASKS]        (from the repository root; TASKS default 16)
# DATA, FEATURES, EXTRACT_ARGS, AUGMENT_ARGS reach the jobs through the environment; sbatch
# options for every job (partition, account) go in SBATCH_ARGS.
set -euo pipefail
TASKS=${1:-16}
SBATCH=${SBATCH:-sbatch}
HERE=$(dirname "$0")
if ! [ "$TASKS" -ge 1 ] 2>/dev/null; then
  echo "expected a number of tasks >= 1, got $TASKS" >&2
  exit 2
fi

submit() {  # sbatch --parsable prints "jobid" or "jobid;cluster"
  local out
  out=$($SBATCH --parsable ${SBATCH_ARGS:-} "$@")
  echo "${out%%;*}"
}

extract=$(submit --array=0-$((TASKS - 1)) --export=ALL,STAGE=extract "$HERE/extract.sbatch")
if [ "${AUGMENT:-1}" = 0 ]; then
  index=$(submit --dependency=afterok:"$extract" --export=ALL,VERIFY=1 "$HERE/index.sbatch")
  echo "extraction array: job $extract ($TASKS tasks); index and verify: job $index"
  exit 0
fi
index=$(submit --dependency=afterok:"$extract" --export=ALL,VERIFY=0 "$HERE/index.sbatch")
augment=$(submit --dependency=afterok:"$index" --array=0-$((TASKS - 1)) --export=ALL,STAGE=augment \
  "$HERE/extract.sbatch")
final=$(submit --dependency=afterok:"$augment" --export=ALL,VERIFY=1 "$HERE/index.sbatch")
echo "extraction array: job $extract ($TASKS tasks); index: job $index"
echo "augmentation array: job $augment ($TASKS tasks); index and verify: job $final"
