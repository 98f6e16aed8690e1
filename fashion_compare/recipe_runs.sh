#!/bin/bash
# The recipe runs, one training at a time (logs: runs/recipe_runs.log).
#   bash fashion_compare/recipe_runs.sh            # the sweep runs on the validation split, then the final runs
#   bash fashion_compare/recipe_runs.sh final      # only the final runs: default TrainConfig, full 60,000 images, 3 seeds x 2 twins
# Final test accuracy is then measured from the written checkpoints:
#   bash fashion_compare/recipe_runs.sh evaluate   # fashion-twins evaluate on each checkpoint, then the results table
# A run whose metrics show all its epochs is skipped, so the script can be restarted after a crash.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
done_() { python3 - "$1" <<'PY'
import json, sys
try:
    m = json.load(open(sys.argv[1]))
    sys.exit(0 if len(m["epochs"]) == m["config"]["epochs"] else 1)
except Exception:
    sys.exit(1)
PY
}
run() {  # run BACKEND DIR NAME KEY=VALUE...
    backend=$1 dir=$2 name=$3; shift 3
    if done_ "$dir/$name.metrics.json"; then echo "=== $name already done"; return; fi
    echo "=== $backend $name $* $(date -u +%T)"
    python3 -m fashion_compare.sweep --backend "$backend" --name "$name" --out-dir "$dir" --set "$@"
    echo "=== end $name $(date -u +%T)"
}
sweep() {  # flax on the validation split (5,000 held out): the recipe is chosen here, never on the test set
    run flax runs/sweep f_base val_size=5000 epochs=50 batch_size=64 lr=5e-4 weight_decay=5e-2 label_smoothing=0.1 augment_shift=1
    run flax runs/sweep f_noaug val_size=5000 epochs=50 batch_size=64 lr=5e-4 weight_decay=5e-2 label_smoothing=0.1 augment_shift=0
}
final() {  # seed by seed, alternating twins, so a cut-short session still has both twins
    for seed in 0 1 2; do
        run flax runs/final flax_s$seed seed=$seed
        run torch runs/final torch_s$seed seed=$seed
    done
}
evaluate() {  # the project's own evaluate command on each written checkpoint, by the twin that trained it
    for f in runs/final/*_s?.safetensors; do
        name=$(basename "$f" .safetensors)
        python3 -m fashion_twins evaluate --backend "${name%%_*}" "$f" | tee "runs/final/$name.eval.txt"
    done
    python3 -m fashion_compare.sweep --final-table runs/final
}
case "${1:-all}" in
    final) final ;;
    evaluate) evaluate ;;
    sweep) sweep ;;
    *) run flax runs/sweep f_base val_size=5000 epochs=50 batch_size=64 lr=5e-4 weight_decay=5e-2 label_smoothing=0.1 augment_shift=1
       final
       run flax runs/sweep f_noaug val_size=5000 epochs=50 batch_size=64 lr=5e-4 weight_decay=5e-2 label_smoothing=0.1 augment_shift=0 ;;
esac
echo "=== queue finished $(date -u +%T)"
