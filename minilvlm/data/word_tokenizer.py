"""A word-level tokenizer built deterministically from a data set's texts, for models trained from
scratch (the demo). Words and punctuation runs are split as by `tokenizers`' Whitespace
pre-tokenizer; the vocabulary is the special tokens, then every word by falling count (ties by
spelling), so the same texts always give the same ids. Saved as a tokenizer.json (plus
tokenizer_config.json naming EOS and PAD) that minilvlm.data.tokenizer.Tokenizer reads."""
import json
from collections import Counter
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from minilvlm.data.templates import CHATML_SYSTEM
from minilvlm.io import atomic_write_text, atomic_write_with

SPECIAL_TOKENS = ("<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>")


def build_word_tokenizer(texts, out_dir):
    """Write out_dir/tokenizer.json and tokenizer_config.json; returns the folder."""
    splitter = pre_tokenizers.Whitespace()
    # The chat template's own words (chatml markup) are part of every sample.
    corpus = list(texts) + [CHATML_SYSTEM, "system user assistant"]
    counts = Counter(word for text in corpus for word, _ in splitter.pre_tokenize_str(text))
    for token in SPECIAL_TOKENS:
        counts.pop(token, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = splitter
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    out_dir = Path(out_dir)
    atomic_write_with(out_dir / "tokenizer.json", tokenizer.save)
    config = {"eos_token": "<|im_end|>", "pad_token": "<pad>", "unk_token": "<unk>"}
    atomic_write_text(json.dumps(config, indent=1), out_dir / "tokenizer_config.json")
    return out_dir
