"""What an exported folder needs to chat in `transformers` as the run does: the run's chat template
as a Jinja `chat_template` (the string that minilvlm.data.templates renders, system turn included;
an image content part becomes the image token and a newline, where our tools put `<image>\n`), and a
generation_config.json with our bos, eos and pad ids and the template's stop tokens.

The Jinja text is built per run: the special tokens and the default system prompt are written into
it as literals, so it renders the same whatever special tokens the tokenizer declares."""
import json

from minilvlm.data.templates import CHATML_SYSTEM, VICUNA_SYSTEM, stop_tokens

# Our tools' default reply length (tools/generate.py --max-new-tokens).
MAX_NEW_TOKENS = 64


def _literal(text):
    """A Jinja string literal of `text` (JSON's escapes are Jinja's)."""
    return json.dumps(text)


def _content_macro(image_token):
    """text(content): a message's content, a string or a list of typed parts (images first where
    the user put them, each as the image token and a newline)."""
    return ("{%- macro text(content) -%}"
            "{%- if content is string -%}{{ content }}"
            "{%- else -%}{%- for part in content -%}"
            "{%- if part['type'] == 'image' -%}{{ " + _literal(image_token + "\n") + " }}"
            "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}"
            "{%- endmacro -%}")


def _turns(default_system):
    """Sets `system` (the system text) and `turns` (the messages after it), and checks that the roles
    alternate user, assistant, as minilvlm.data.templates.normalize does."""
    return ("{%- if messages[0]['role'] == 'system' -%}"
            "{%- set system = text(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
            "{%- else -%}{%- set system = " + _literal(default_system) + " -%}{%- set turns = messages -%}"
            "{%- endif -%}"
            "{%- for m in turns -%}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
            "{{ raise_exception('roles must alternate user, assistant, ... starting with user') }}"
            "{%- endif -%}{%- endfor -%}")


def _chatml():
    return (_turns(CHATML_SYSTEM)
            + "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
            "{%- for m in turns -%}"
            "{%- if m['role'] == 'user' -%}{{ '<|im_start|>user\\n' + text(m['content']) + '<|im_end|>\\n' }}"
            "{%- if not loop.last or add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
            "{%- else -%}{{ text(m['content']) + '<|im_end|>\\n' }}{%- endif -%}"
            "{%- endfor -%}")


def _vicuna_like(bos, eos):
    start = "{{ " + _literal(bos) + " }}" if bos else ""
    return (_turns(VICUNA_SYSTEM) + start
            + "{{ system + ' ' }}"
            "{%- for m in turns -%}"
            "{%- if m['role'] == 'user' -%}{{ 'USER: ' + text(m['content']) + ' ASSISTANT:' }}"
            "{%- else -%}{{ ' ' + text(m['content']) + " + _literal(eos) + " }}{%- endif -%}"
            "{%- endfor -%}")


def _plain(bos, image_token):
    start = "{{ " + _literal(bos) + " }}" if bos else ""
    return (start + "{{ " + _literal(image_token) + " }}"
            "{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}{{ text(m['content']) + '\\n' }}"
            "{%- endif -%}{%- endfor -%}")


def jinja_template(template, tokenizer):
    """The Jinja chat_template that renders our `template` for `tokenizer` (its bos, eos and image
    token written in as literals)."""
    if template == "chatml":
        body = _chatml()
    elif template == "vicuna_v1":
        body = _vicuna_like(tokenizer.bos_token, tokenizer.eos_token)
    elif template == "phi":
        body = _vicuna_like(None, "<|endoftext|>")
    elif template == "plain":
        body = _plain(tokenizer.bos_token, tokenizer.image_token)
    else:
        raise ValueError(f"no chat_template for template {template!r}")
    return _content_macro(tokenizer.image_token) + body


def generation_config(template, tokenizer, max_new_tokens=MAX_NEW_TOKENS):
    """generation_config.json: greedy, our bos/pad ids, and eos = the template's stop tokens (then
    the tokenizer's eos), so `model.generate` stops where our generate does."""
    stops = list(dict.fromkeys([*stop_tokens(template, tokenizer), tokenizer.eos_id]))
    out = {"do_sample": False, "max_new_tokens": max_new_tokens,
           "eos_token_id": [s for s in stops if s is not None], "pad_token_id": tokenizer.pad_id}
    if tokenizer.bos_token is not None:
        out["bos_token_id"] = tokenizer.bos_id
    return out
