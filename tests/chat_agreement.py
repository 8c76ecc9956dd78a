"""Does an exported run chat in `transformers` as it does in minilvlm? For demo test questions
(half of them on non-square copies of their images), the reply of tools/generate.py --temperature 0
against the reply of `processor.apply_chat_template(...)` + `model.generate(**inputs)` on the export.

    python -m tests.chat_agreement RUN_DIR EXPORT_DIR [--questions 20]     # prints each pair and the count
    python -m tests.chat_agreement RUN_DIR EXPORT_DIR --text               # text-only instructions
    python -m tests.chat_agreement RUN_DIR EXPORT_DIR --text --no-system   # a chatml prompt written by
                                                                           # hand without the system turn

Used by tests/test_export_chat.py on the tiny run, and for the figures in docs/tools.md on a demo run."""
import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from minilvlm.data.demo import load_demo
from minilvlm.data.records import IMAGE_TAG
from tests.models.hf_fixtures import transformers
from tests.tools_main import tool_main


def widen(image_path, out_path, axis):
    """A non-square copy of a demo picture: its canvas extended by half (axis 1: wider, 0: taller)
    with the picture's own background colour (its corner pixel), the shapes untouched."""
    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    extra = list(pixels.shape)
    extra[axis] = pixels.shape[axis] // 2
    background = np.broadcast_to(pixels[0, 0], extra)
    Image.fromarray(np.concatenate((pixels, background), axis=axis)).save(out_path)
    return out_path


def questions(run_dir, count, scratch, text_only=False):
    """[(prompt, image path)] of the first `count` image questions of the run's demo test split (then
    its val split, for a tiny run's short splits); every second one on a non-square copy of its
    picture (alternately wider and taller). With text_only, its text-only instructions instead
    (image path None)."""
    records = [r for split in ("test", "val") for r in load_demo(Path(run_dir) / "data", split)
               if bool(r.images) != text_only][:count]
    out = []
    for i, record in enumerate(records):
        prompt = record.turns[0].text.replace(IMAGE_TAG, "").strip()
        if text_only:
            out.append((prompt, None))
            continue
        image = record.images[0]
        if i % 2:
            image = widen(image, Path(scratch) / f"nonsquare-{i}.png", axis=(i // 2) % 2)
        out.append((prompt, str(image)))
    return out


def ours(run_dir, prompt, image):
    """tools/generate.py's greedy reply."""
    stdout = io.StringIO()
    image_args = ["--image", image] if image else []
    code = tool_main("generate")([str(run_dir), *image_args, "--prompt", prompt, "--temperature", "0"], stdout)
    if code:
        raise RuntimeError(f"tools/generate.py failed with code {code}")
    return stdout.getvalue().removesuffix("\n")


def _hand_written(processor, prompt, image):
    """A chatml prompt written by hand without the system turn (what docs/tools.md showed before
    the export had a chat template), through the processor."""
    text = f"<|im_start|>user\n{IMAGE_TAG + chr(10) if image else ''}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    images = Image.open(image) if image else None
    return processor(images=images, text=text, return_tensors="pt")


def theirs(processor, model, prompt, image, no_system=False):
    """The export's greedy reply through its processor's chat template (or, with no_system, the
    hand-written prompt) and generate()."""
    if no_system:
        inputs = _hand_written(processor, prompt, image)
    else:
        content = ([{"type": "image", "path": image}] if image else []) + [{"type": "text", "text": prompt}]
        inputs = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")
    new = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
    return processor.decode(new, skip_special_tokens=True)


def agreement(run_dir, export_dir, count, scratch, text_only=False, no_system=False):
    """[(prompt, image, ours, theirs)] for `count` questions (image questions, or text-only ones)."""
    processor = transformers.AutoProcessor.from_pretrained(export_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(export_dir).eval()
    return [(prompt, image, ours(run_dir, prompt, image), theirs(processor, model, prompt, image, no_system))
            for prompt, image in questions(run_dir, count, scratch, text_only)]


def main(argv=None):
    import tempfile
    parser = argparse.ArgumentParser(prog="python -m tests.chat_agreement")
    parser.add_argument("run_dir")
    parser.add_argument("export_dir")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--text", action="store_true", help="text-only instructions instead of image questions")
    parser.add_argument("--no-system", action="store_true",
                        help="transformers gets a chatml prompt written by hand without the system turn")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        rows = agreement(ns.run_dir, ns.export_dir, ns.questions, scratch, ns.text, ns.no_system)
        for prompt, image, a, b in rows:
            size = "x".join(map(str, Image.open(image).size)) if image else "text"
            print(f"{'same' if a == b else 'DIFF'}  {size}  {prompt[:50]!r}: ours {a!r} / transformers {b!r}")
    same = sum(a == b for _, _, a, b in rows)
    print(f"{same} of {len(rows)} replies identical")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
