"""A tokenizer and chat template for the data tests, standing in for minilvlm's real ones.

`ByteTokenizer` maps UTF-8 bytes to ids (exact round trip for any text); `BpeTokenizer` is a
small byte-level BPE trained with the `tokenizers` library, so that multi-byte merges cross
character boundaries. `toy_template` builds a conversation piece by piece, as the real templates
do, and marks the reply text and its end-of-turn token as assistant tokens.
"""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, IMAGE = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]


class ByteTokenizer:
    image_token_id, pad_id, bos_id, eos_id = IMAGE, PAD, BOS, EOS

    def encode(self, text):
        ids = []
        for i, piece in enumerate(text.split("<image>")):
            if i:
                ids.append(IMAGE)
            ids.extend(b + 4 for b in piece.encode("utf-8"))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            if i == IMAGE:
                out += b"<image>"
            elif i >= 4:
                out.append(i - 4)
        return out.decode("utf-8")


class BpeTokenizer:
    pad_id, bos_id, eos_id, image_token_id = PAD, BOS, EOS, IMAGE

    def __init__(self, corpus, vocab_size=400):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        assert [tok.token_to_id(s) for s in SPECIALS] == [PAD, BOS, EOS, IMAGE]
        self.tok = tok

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)


def toy_template(tokenizer, turns):
    ids, assistant = [tokenizer.bos_id], [False]

    def add(piece_ids, is_reply):
        ids.extend(piece_ids)
        assistant.extend([is_reply] * len(piece_ids))

    for role, text in turns:
        if role == "assistant":
            add(tokenizer.encode("ASSISTANT: "), False)
            add(tokenizer.encode(text) + [tokenizer.eos_id], True)
        else:
            add(tokenizer.encode(f"{role.upper()}: {text}\n"), False)
    return ids, assistant
