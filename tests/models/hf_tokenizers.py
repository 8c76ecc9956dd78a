"""Tiny tokenizers of the LM families we load, saved by `transformers` as users get them (test-only):
word-level vocabularies over the demo's texts, with each family's special tokens and settings.

  llama   <unk> <s> </s>, bos <s> eos </s>, LlamaTokenizerFast (its post-processor adds <s>); no <image>
  qwen2   <|endoftext|> <|im_start|> <|im_end|>, eos <|im_end|>, a chatml chat_template, tokenizer_class
          Qwen2Tokenizer; its model is given a padded vocabulary (more rows than ids)
  phi     <|endoftext|> as bos, eos and unk, tokenizer_class CodeGenTokenizer

`hf_lvlm_folders` makes the whole set the must-show tests use: CLIP and SigLIP towers, and the three
LMs with their tokenizers, each LM's vocabulary sized to its tokenizer."""
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from minilvlm.data import demo
from tests.models import hf_fixtures
from tests.models.hf_fixtures import transformers

QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
FAMILIES = {
    "llama": dict(specials=("<unk>", "<s>", "</s>"), config=dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")),
    "qwen2": dict(specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                  config=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")),
    "phi": dict(specials=("<|endoftext|>",), config=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                                         unk_token="<|endoftext|>")),
}
QWEN_PADDING = 13   # rows past the tokenizer's ids in the tiny Qwen2's embedding


def demo_texts(sizes=None, image_size=32):
    """The texts of a small generated demo set (every word a run on the demo data will meet)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        demo.generate(tmp, seed=0, sizes=sizes or {"train": 300, "val": 20, "test": 40}, image_size=image_size)
        return [t.text for split in ("train", "val", "test") for r in demo.load_demo(tmp, split) for t in r.turns]


def family_tokenizer(folder, family, texts):
    """Save the family's tokenizer into folder with transformers; returns its number of ids."""
    spec = FAMILIES[family]
    split = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts + ["system user assistant USER ASSISTANT :"]
                    for w, _ in split.pre_tokenize_str(text)} - set(spec["specials"]) - {"<image>"})
    vocab = {token: i for i, token in enumerate([*spec["specials"], *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=spec["config"]["unk_token"]))
    tok.pre_tokenizer = split
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"]])
    if family == "llama":
        fast = transformers.LlamaTokenizerFast(tokenizer_object=tok, **spec["config"])
    else:
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **spec["config"])
    if family == "qwen2":
        fast.chat_template = QWEN_CHAT
    fast.save_pretrained(folder)
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = {"llama": "LlamaTokenizerFast", "qwen2": "Qwen2Tokenizer",
                                 "phi": "CodeGenTokenizer"}[family]
    config_path.write_text(json.dumps(config))
    return len(fast)


def hf_lvlm_folders(root, texts=None):
    """{name: folder} of CLIP and SigLIP towers and LLaMA, Qwen2 (padded) and Phi-2 LMs with their
    tokenizers, made with transformers under root."""
    root = Path(root)
    texts = texts or demo_texts()
    folders = {"clip": root / "clip", "siglip": root / "siglip"}
    hf_fixtures.clip_vision(folders["clip"], image_size=32, patch_size=8)
    hf_fixtures.siglip_vision(folders["siglip"], image_size=32, patch_size=8)
    for family, make in (("llama", hf_fixtures.llama), ("qwen2", hf_fixtures.qwen2), ("phi", hf_fixtures.phi)):
        folders[family] = root / family
        ids = family_tokenizer(folders[family], family, texts)
        make(folders[family], vocab_size=ids + (QWEN_PADDING if family == "qwen2" else 0))
    return folders
