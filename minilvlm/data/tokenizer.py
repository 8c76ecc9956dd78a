"""A Hugging Face `tokenizer.json`, read by the `tokenizers` library, plus the special tokens our
recipes need. The image placeholder (`<image>` by default) is added as a special token when the
vocabulary lacks it; the recipes then grow the LM's embedding by a row for it
(minilvlm/recipes/pretrained.py, `decoder_config`)."""
import json
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

from minilvlm.data.errors import DataError


def _token_text(value):
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    def __init__(self, path, image_token="<image>", bos_token=None, eos_token=None, pad_token=None):
        """path: a model folder (tokenizer.json and optionally tokenizer_config.json) or a tokenizer.json.
        Explicit bos/eos/pad tokens override those in tokenizer_config.json."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: minilvlm reads the fast-tokenizer file tokenizer.json "
                                    f"(save it with `tokenizer.save_pretrained` in transformers)")
        try:
            self._tok = _HFTokenizer.from_file(str(file))
        except Exception as exc:   # the tokenizers library's own error for a file it cannot parse
            raise DataError(f"not a readable tokenizer.json ({str(exc)[:200]})", reason="bad_tokenizer",
                            file=file) from None
        config = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"not valid JSON ({exc})", reason="bad_tokenizer", file=config_file) from None
            config = config if isinstance(config, dict) else {}
        self.bos_token = bos_token or _token_text(config.get("bos_token"))
        self.eos_token = eos_token or _token_text(config.get("eos_token"))
        self.pad_token = pad_token or _token_text(config.get("pad_token"))
        self.image_token = image_token
        if image_token is not None and self._tok.token_to_id(image_token) is None:
            self._tok.add_special_tokens([AddedToken(image_token, special=True, normalized=False)])

    def token_id(self, token):
        """Id of a token that must exist (a special token named by a template or a config)."""
        if token is None:
            return None
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary or added tokens")
        return token_id

    @property
    def bos_id(self):
        return self.token_id(self.bos_token)

    @property
    def eos_id(self):
        return self.token_id(self.eos_token)

    @property
    def pad_id(self):
        """The pad token's id, falling back to eos (many decoders ship without a pad token)."""
        return self.token_id(self.pad_token) if self.pad_token is not None else self.eos_id

    @property
    def image_token_id(self):
        return self.token_id(self.image_token)

    @property
    def vocab_size(self):
        """Including added tokens, so the image token's id is below it."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def base_vocab_size(self):
        """The ids of the tokenizer's model alone, without the added tokens."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    def save(self, path):
        """Write tokenizer.json as this tokenizer encodes: the file's vocabulary plus the image token
        when it was added here."""
        self._tok.save(str(path))

    def has_token(self, token):
        return self._tok.token_to_id(token) is not None

    def encode(self, text):
        """Token ids of text, without BOS/EOS (templates place those themselves). Special and added
        tokens written in the text (`<image>`, `<|im_end|>`) become their single ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True):
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
