"""Export a trained llava-recipe run to a Hugging Face folder that transformers loads.

    minilvlm-export runs/demo --out hf/demo                    # LlavaForConditionalGeneration
    minilvlm-export runs/demo --out hf/demo_lm --decoder-only  # LlamaForCausalLM (or Qwen2/Phi)
    minilvlm-export RUN/checkpoints/step_000500 --out hf/x --dtype bfloat16 --max-shard-size 2GB
    minilvlm-export runs/lora --out hf/lora --lora adapter     # hf/lora/base + hf/lora/adapter (peft)

(`python tools/export_hf.py` is the same command.) The folder holds config.json, model.safetensors
(or shards with an index), tokenizer.json with its tokenizer_config.json (and the run's chat
template), generation_config.json, and for LLaVA preprocessor_config.json, processor_config.json and
chat_template.json. A LoRA run is exported merged, or with --lora adapter as its base model plus a
peft adapter.
"""
import sys

from minilvlm.cli.common import parser_for, run
from minilvlm.export import DTYPES, LORA_MODES, export_run, parse_size


def _parser():
    parser = parser_for(__doc__)
    parser.add_argument("path", metavar="RUN_DIR", help="a run folder or a checkpoint folder")
    parser.add_argument("--out", required=True, help="the folder to write (must be new or empty)")
    parser.add_argument("--decoder-only", action="store_true", help="export the language model alone")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: as trained)")
    parser.add_argument("--max-shard-size", default="5GB", help="split larger weights into shards (default 5GB)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing an export")
    parser.add_argument("--device", default="auto", help="where the run is loaded: auto, cpu, cuda or cuda:N")
    parser.add_argument("--lora", choices=LORA_MODES, default="merged",
                        help="a LoRA run: its updates merged into the weights (default), or OUT/base + OUT/adapter")
    return parser


def _body(ns):
    summary = export_run(ns.path, ns.out, decoder_only=ns.decoder_only, dtype=DTYPES.get(ns.dtype),
                         max_shard_bytes=parse_size(ns.max_shard_size), force=ns.force, device=ns.device,
                         lora=ns.lora)
    print(f"{summary['architecture']}: {summary['parameters']:,} parameters in {summary['tensors']} tensors "
          f"from {summary['checkpoint']} -> {summary['out']}")
    print("  " + " ".join(summary["files"]))


def main(argv=None):
    return run(_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
