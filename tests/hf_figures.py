"""The figures behind docs/tools.md's round trip and docs/training.md's LoRA export, measured rather
than only bounded by the tests (tests/test_hf_llava.py, tests/test_export_lora.py):

    python -m tests.hf_figures roundtrip          # llava-hf folders (both layouts) -> run -> export
    python -m tests.hf_figures lora RUN_DIR       # a LoRA run: merged and peft exports against ours

Each prints the largest relative logit difference (max |a - b| / max |b|)."""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tests.models.hf_fixtures import transformers
from tests.tools_main import TOOLS


def _export(run, out, *extra):
    subprocess.run([sys.executable, str(TOOLS / "export_hf.py"), str(run), "--out", str(out), *extra], check=True,
                   capture_output=True)


def roundtrip(scratch):
    from minilvlm.recipes import load_config
    from minilvlm.train.loop import train
    from tests.test_hf_llava import TINY_RUN, _llava_with_tokenizer, _relative_error
    for layout, extra in (("legacy", False), ("modules", True)):
        folder, run, out = (Path(scratch) / layout / name for name in ("hf", "run", "out"))
        hf, image_id, vocab = _llava_with_tokenizer(folder, layout, extra)
        train(load_config(None, TINY_RUN + [f"model.init_from={json.dumps(str(folder))}",
                                            f"train.run_dir={json.dumps(str(run))}"]))
        _export(run, out)
        back = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
        torch.manual_seed(0)
        ids, pixels = torch.tensor([[1] + [image_id] * 16 + [5, 6, 7, 8, 9]]), torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            original = hf(input_ids=ids, pixel_values=pixels).logits
            exported = back(input_ids=ids, pixel_values=pixels).logits[..., :vocab]
        rows = back.get_input_embeddings().weight
        print(f"{layout} layout{' + an added token' if extra else ''}: logits {_relative_error(exported, original):.3g} "
              f"relative, original rows unchanged: {torch.equal(rows[:vocab], hf.get_input_embeddings().weight)}, "
              f"rows {vocab} -> {rows.shape[0]}")


def lora(run, scratch):
    import peft
    from tests.test_export_lora import _inputs, _ours, _relative_error
    merged, split = Path(scratch) / "merged", Path(scratch) / "split"
    _export(run, merged)
    _export(run, split, "--lora", "adapter")
    inputs = _inputs(merged, Path(run))
    ours = _ours(Path(run), inputs)
    with torch.no_grad():
        theirs = transformers.LlavaForConditionalGeneration.from_pretrained(merged).eval()(**inputs).logits
        base = transformers.LlavaForConditionalGeneration.from_pretrained(split / "base").eval()
        adapted = peft.PeftModel.from_pretrained(base, split / "adapter").eval()(**inputs).logits
    print(f"merged export vs ours {_relative_error(ours, theirs):.3g}, peft adapter vs ours "
          f"{_relative_error(ours, adapted):.3g} (relative)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.hf_figures")
    parser.add_argument("what", choices=("roundtrip", "lora"))
    parser.add_argument("run_dir", nargs="?", help="the LoRA run (for lora)")
    ns = parser.parse_args(argv)
    if ns.what == "lora" and not ns.run_dir:
        parser.error("lora needs RUN_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        roundtrip(scratch) if ns.what == "roundtrip" else lora(ns.run_dir, scratch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
