"""Chat templates that turn a conversation into token ids and, for every id, whether it belongs to
an assistant reply (the tokens the loss is computed on). The ids are built piece by piece: each
segment is tokenized on its own and its mask recorded as it is appended, so the mask is exact by
construction, never recovered afterwards by searching the token stream.

  plain      LLaVA pre-training: <image> then the caption and "\n"; only the caption is learned.
  vicuna_v1  LLaVA-1.5: "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."
  chatml     Qwen2: "<|im_start|>{role}\n{text}<|im_end|>\n"
  phi        ALLaVA's Phi-2 chats: vicuna_v1's layout with <|endoftext|> closing each reply, no BOS.

Conversations are LLaVA records ([{"from": "human"|"gpt", "value": ...}]) or chat messages
([{"role": "system"|"user"|"assistant", "content": ...}])."""
from dataclasses import dataclass

from minilvlm.data.errors import DataError

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CHATML_SYSTEM = "You are a helpful assistant."
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE_INDEX = -100


@dataclass
class Rendered:
    ids: list
    assistant: list  # one bool per id: True where the id is part of an assistant reply

    def labels(self, ignore_index=IGNORE_INDEX):
        """Targets for next-token loss: the id on assistant tokens, ignore_index elsewhere."""
        return [i if a else ignore_index for i, a in zip(self.ids, self.assistant)]


class _Builder:
    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.assistant = tokenizer, [], []

    def text(self, text, assistant=False):
        ids = self.tokenizer.encode(text)
        self.ids += ids
        self.assistant += [assistant] * len(ids)

    def token(self, token_id, assistant=False):
        self.ids.append(token_id)
        self.assistant.append(assistant)


def normalize(conversation):
    """[(role, text)] with roles system/user/assistant; turns must alternate user, assistant."""
    turns = []
    for i, turn in enumerate(conversation):
        role = _ROLES.get(turn.get("from", turn.get("role")))
        text = turn.get("value", turn.get("content"))
        if role is None or not isinstance(text, str):
            raise ValueError(f"turn {i}: expected {{'from': 'human'|'gpt', 'value': str}} or "
                             f"{{'role': 'user'|'assistant'|'system', 'content': str}}, got {turn!r}")
        turns.append((role, text))
    system = None
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"turn {i + (system is not None)}: roles must alternate user, assistant, ... "
                             f"starting with user; got {role!r}")
    return system, turns


def _plain(b, tokenizer, system, turns, generation_prompt):
    if len(turns) != (1 if generation_prompt else 2):
        raise ValueError(f"template 'plain' takes one image and one caption (a user turn and an assistant "
                         f"turn); got {len(turns)} turns")
    if tokenizer.bos_token is not None:
        b.token(tokenizer.bos_id)
    b.token(tokenizer.image_token_id)  # the user text is replaced by the image alone, as LLaVA does
    if not generation_prompt:
        b.text(turns[1][1] + "\n", assistant=True)


def _vicuna_like(eos_token_of, add_bos, default_system):
    def render(b, tokenizer, system, turns, generation_prompt):
        if eos_token_of(tokenizer) is None:
            raise ValueError("this template closes replies with the EOS token, and the tokenizer has none: "
                             "pass eos_token= to Tokenizer or add it to tokenizer_config.json")
        eos = tokenizer.token_id(eos_token_of(tokenizer))
        if add_bos and tokenizer.bos_token is not None:
            b.token(tokenizer.bos_id)
        prefix = (default_system if system is None else system) + " "
        for i in range(0, len(turns), 2):
            b.text(f"{prefix}USER: {turns[i][1]} ASSISTANT:")
            prefix = ""
            if i + 1 < len(turns):
                b.text(" " + turns[i + 1][1], assistant=True)
                b.token(eos, assistant=True)
    return render


def _chatml(b, tokenizer, system, turns, generation_prompt):
    for token in ("<|im_start|>", "<|im_end|>"):
        if not tokenizer.has_token(token):
            raise ValueError(f"template 'chatml' needs {token} in the tokenizer (Qwen2 tokenizers have it)")
    end = tokenizer.token_id("<|im_end|>")
    b.text(f"<|im_start|>system\n{CHATML_SYSTEM if system is None else system}<|im_end|>\n")
    for i in range(0, len(turns), 2):
        b.text(f"<|im_start|>user\n{turns[i][1]}<|im_end|>\n<|im_start|>assistant\n")
        if i + 1 < len(turns):
            b.text(turns[i + 1][1], assistant=True)
            b.token(end, assistant=True)
            b.text("\n")


TEMPLATES = {
    "plain": _plain,
    "vicuna_v1": _vicuna_like(lambda t: t.eos_token, add_bos=True, default_system=VICUNA_SYSTEM),
    "chatml": _chatml,
    "phi": _vicuna_like(lambda t: "<|endoftext|>", add_bos=False, default_system=VICUNA_SYSTEM),
}


def stop_tokens(template, tokenizer):
    """Ids that end an assistant reply under this template (for generation)."""
    token = {"chatml": "<|im_end|>", "phi": "<|endoftext|>"}.get(template, tokenizer.eos_token)
    return [tokenizer.token_id(token)]


def render(conversation, tokenizer, template, generation_prompt=False):
    """Rendered ids and assistant mask. With generation_prompt, the conversation ends with a user turn
    and the ids end where the assistant's reply would start (the prompt for generation)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; known: {sorted(TEMPLATES)}")
    system, turns = normalize(conversation)
    if not turns or (len(turns) % 2 == 1) != generation_prompt:
        want = "end with a user turn" if generation_prompt else "end with an assistant turn"
        raise ValueError(f"template {template!r}: the conversation must {want} (it has {len(turns)} turns)")
    builder = _Builder(tokenizer)
    TEMPLATES[template](builder, tokenizer, system, turns, generation_prompt)
    return Rendered(builder.ids, builder.assistant)


def chat_template(name):
    """Template `name` in the form the data pipeline takes (minilvlm.data.labels.ChatTemplate):
    (tokenizer, turns) -> (ids, assistant mask). A conversation the template cannot render is a
    DataError with reason "template", so on_error="skip" counts it like any other bad record."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}")
    def apply(tokenizer, turns):
        try:
            rendered = render([{"role": t.role, "content": t.text} for t in turns], tokenizer, name)
        except ValueError as exc:
            raise DataError(str(exc), reason="template") from exc
        return rendered.ids, rendered.assistant
    apply.__name__ = f"chat_template_{name}"
    return apply

