"""From a Record to token ids and labels: chat template, image-token expansion, masking, truncation.

The tokenizer and chat template are described by the two Protocols below; minilvlm's own
(minilvlm/data/tokenizer.py, templates.py) satisfy them, and any object with the same members
does. The template decides, token by token, what belongs to an assistant reply, because it builds
the sequence piece by piece; so labels never need re-aligning afterwards, and LLaVA's
"tokenization mismatch" (re-tokenizing a joined string and guessing offsets) cannot happen.

Labels are aligned with input_ids (the loss shifts them): the id where the token is part of an
assistant reply, IGNORE_INDEX everywhere else (system, user turns, template markup, image tokens).
"""
from dataclasses import dataclass
from typing import Protocol, Sequence

from minilvlm.data.errors import DataError
from minilvlm.data.records import Record, Turn

IGNORE_INDEX = -100


class ChatTokenizer(Protocol):
    image_token_id: int   # the single id that the text "<image>" encodes to
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ChatTemplate(Protocol):
    def __call__(self, tokenizer: ChatTokenizer, turns: Sequence[Turn]) -> tuple[list[int], list[bool]]:
        """The conversation's token ids (with BOS/markup as the template wants) and, per token,
        whether it belongs to an assistant reply (the reply text and its end-of-turn token)."""
        ...


@dataclass
class Encoded:
    input_ids: list
    labels: list
    n_images: int
    truncated: bool   # True when the tail past max_len was cut off

    def __len__(self):
        return len(self.input_ids)


def expand_images(ids, assistant, image_token_id, image_tokens):
    """Replace each image placeholder by `image_tokens` copies (the model writes the image's
    features there) and build the labels. Returns (input_ids, labels, n_images)."""
    input_ids, labels, n_images = [], [], 0
    for token, is_reply in zip(ids, assistant):
        if token == image_token_id:
            if is_reply:
                raise DataError("the template marked an image token as part of a reply",
                                reason="image_tags")
            input_ids.extend([image_token_id] * image_tokens)
            labels.extend([IGNORE_INDEX] * image_tokens)
            n_images += 1
        else:
            input_ids.append(token)
            labels.append(token if is_reply else IGNORE_INDEX)
    return input_ids, labels, n_images


def encode_record(record: Record, tokenizer: ChatTokenizer, template: ChatTemplate,
                  image_tokens: int, max_len: int) -> Encoded:
    """Tokenize one record. Raises DataError when the record has nothing to learn from or its
    images would not fit in max_len (cutting an image's tokens in half has no meaning)."""
    ids, assistant = template(tokenizer, record.turns)
    if len(ids) != len(assistant):
        raise ValueError(f"the chat template returned {len(ids)} ids but {len(assistant)} mask flags")
    input_ids, labels, n_images = expand_images(ids, assistant, tokenizer.image_token_id, image_tokens)
    if n_images != len(record.images):
        raise DataError(f"the tokenized text has {n_images} image placeholder(s) for "
                        f"{len(record.images)} image(s); is '<image>' a special token of the "
                        "tokenizer, and is it absent from the replies?", reason="image_tags")
    truncated = len(input_ids) > max_len
    if truncated:
        if n_images:
            last_image = max(i for i, t in enumerate(input_ids) if t == tokenizer.image_token_id)
            if last_image >= max_len:
                raise DataError(f"the record is {len(input_ids)} tokens long and its image tokens "
                                f"end at {last_image + 1}, past max_len={max_len}",
                                reason="image_truncated")
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    if all(label == IGNORE_INDEX for label in labels):
        reason = "no_target_after_truncation" if truncated else "no_target"
        raise DataError(f"no assistant tokens to learn from (length {len(input_ids)}, "
                        f"max_len={max_len})", reason=reason)
    return Encoded(input_ids, labels, n_images, truncated)
