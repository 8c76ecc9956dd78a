#!/usr/bin/env bash
# The data-efficiency demo end to end (docs/data-efficiency.md), from the repository's root:
#   bash tools/demo_data_efficiency.sh [SEEDS] [JOBS]
# 1. generate the data (polluted captions, candidate instruction sets, held-out questions);
# 2. pre-train the reference model on all the captions (configs/demo_data_efficiency.toml);
# 3. perplexity-filter the captions with it (keep 70%) and --compare: the same run on all the captions
#    and on the kept ones, SEEDS seeds;
# 4. select instruction sets by greedy forward selection, fine-tuning the kept-caption model of seed 0,
#    with --soup, the final comparison over SEEDS seeds.
# Everything lands in runs/data_efficiency/; a rerun reuses the finished runs and trials.
set -euo pipefail
SEEDS="${1:-3}"
JOBS="${2:-2}"
OUT=runs/data_efficiency
DATA=$OUT/data
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start )) s] $*"; }

stamp "data"
python -m minilvlm.data.demo "$DATA" --data-efficiency
stamp "reference model on all the captions"
if [ -f "$OUT/reference/summary.json" ]; then echo "reusing $OUT/reference"; else
  python tools/train.py configs/demo_data_efficiency.toml --overwrite; fi
stamp "perplexity filter, keep 70%, and the comparison"
python tools/ppl_filter.py "$DATA/pretrain.json" --model "$OUT/reference" --keep 0.7 --out "$DATA/pretrain_kept.json" \
  --compare configs/demo_data_efficiency.toml --compare-dir "$OUT/filter" --seeds "$SEEDS" --jobs "$JOBS"
python - "$DATA" <<'PY'
import json, sys
data = sys.argv[1]
polluted = {r["id"]: r.get("polluted") for r in json.load(open(f"{data}/pretrain.json"))}
dropped = [json.loads(line)["id"] for line in open(f"{data}/pretrain_kept.scores.jsonl") if not json.loads(line)["kept"]]
caught = sum(polluted[i] is not None for i in dropped)
total = sum(p is not None for p in polluted.values())
print(f"the filter dropped {len(dropped)} records: {caught} of the {total} polluted ones "
      f"({100 * caught / total:.0f}%), and {len(dropped) - caught} clean ones")
PY
stamp "instruction-set selection from the kept-caption model"
python tools/select_data.py --base "$OUT/filter/kept@seed0/run" --sets "$DATA"/sets/*.json \
  --heldout "$DATA/val.json" --test "$DATA/test.json" --steps 200 --out "$OUT/selection" \
  --jobs "$JOBS" --seeds "$SEEDS" --soup
stamp "done"
