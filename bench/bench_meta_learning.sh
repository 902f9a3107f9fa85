#!/usr/bin/env bash
# Meta-train every algorithm on one scenario side and evaluate them, as recorded in
# docs/benchmarks.md. Usage: bench/bench_meta_learning.sh cross-load-123|cross-load-012|novel-class [OUT_DIR]
# Runs on one thread per process; set DATA_DIR to the CWRU folder.
set -euo pipefail
side=${1:?usage: $0 cross-load-123|cross-load-012|novel-class [OUT_DIR]}
out=${2:-runs/bench/$side}
data=${DATA_DIR:-../shared/data/cwru}
export OMP_NUM_THREADS=1
mkdir -p "$out"

case $side in
    cross-load-123) scenario=(--scenario cross-load --loads 1,2,3) ;;
    cross-load-012) scenario=(--scenario cross-load --loads 0,1,2) ;;
    novel-class) scenario=(--scenario novel-class) ;;
    *) echo "unknown side $side" >&2; exit 2 ;;
esac
common=(--data-dir "$data" --window 1024 --hop 512 --seed 0 --threads 1 --no-progress)

edge-agent meta-train "${common[@]}" "${scenario[@]}" --algorithm protonet --episodes 300 --out "$out/protonet.pt"
edge-agent meta-train "${common[@]}" "${scenario[@]}" --algorithm maml --episodes 200 --validate-every 20 --out "$out/maml.pt"
edge-agent meta-train "${common[@]}" "${scenario[@]}" --algorithm fomaml --episodes 200 --validate-every 20 --out "$out/fomaml.pt"
edge-agent meta-train "${common[@]}" "${scenario[@]}" --algorithm reptile --episodes 150 --validate-every 15 --out "$out/reptile.pt"

name=${scenario[1]}
checkpoints=()
for algorithm in protonet maml fomaml reptile; do checkpoints+=(--checkpoint "$out/$algorithm.pt"); done
edge-agent evaluate "${checkpoints[@]}" --data-dir "$data" --scenario "$name" --n-shot 1,5 --episodes 600 \
    --seed 0 --threads 1 --json > "$out/meta.json"
edge-agent evaluate --checkpoint "$out/protonet.pt" --data-dir "$data" --scenario "$name" --n-shot 1,5 \
    --episodes 100 --baselines --baseline-steps 50 --pretrain-steps 500 --seed 0 --threads 1 \
    --plots "$out/plots" > "$out/baselines.txt"
