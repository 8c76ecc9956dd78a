"""Exports that chat: the exported chat_template renders exactly our templates' ids (system turn
included, images where our tools put them), the tokenizer gives no token_type_ids, the generation
config carries our special ids and stop tokens, the image processor reproduces each image mode on
non-square images, and on the tiny run 20 demo questions (half on non-square pictures) get the same
reply from `apply_chat_template` + `generate` as from tools/generate.py --temperature 0."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minilvlm.data.templates import render, stop_tokens
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.eval.chat import prompt_inputs
from minilvlm.eval.load import load_model
from minilvlm.export.chat import jinja_template
from minilvlm.export.hf_configs import image_processor_config
from minilvlm.export.hf_folder import write_tokenizer
from minilvlm.recipes import load_config, of
from tests.chat_agreement import agreement, widen
from tests.models.hf_fixtures import transformers
from tests.models.hf_tokenizers import family_tokenizer
from tests.tools_main import tool_main

TEXTS = ["What colour is the shape? blue", "You are a helpful assistant . Be brief .", "Name a colour . red"]
CONVERSATIONS = [
    ([{"role": "user", "content": "What colour is the shape?"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], True),
    ([{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "red"},
      {"role": "user", "content": "What colour is the shape?"}], True),
    ([{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "blue"}], False),
]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "hf"
    assert tool_main("export_hf")([str(tiny_run), "--out", str(out)]) == 0
    return out


def _exported_tokenizer(tokenizer, template, folder):
    folder.mkdir(exist_ok=True)
    write_tokenizer(tokenizer, folder, 512, image_token=True, chat_template=jinja_template(template, tokenizer))
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("family, template", [("demo", "chatml"), ("llama", "vicuna_v1"), ("phi", "phi"),
                                              ("llama", "plain")])
def test_the_chat_template_renders_our_ids(tiny_run, tmp_path, family, template):
    if family == "demo":
        ours = Tokenizer(tiny_run)
    else:   # transformers' LLaMA tokenizer adds <s> itself: the export drops that post-processor
        family_tokenizer(tmp_path / family, family, TEXTS)
        ours = Tokenizer(tmp_path / family)
    theirs = _exported_tokenizer(ours, template, tmp_path / "export")
    conversations = CONVERSATIONS if template != "plain" else [
        ([{"role": "user", "content": "<image>"}], True),
        ([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a blue shape"}], False)]
    for conversation, generation_prompt in conversations:
        expected = render(conversation, ours, template, generation_prompt=generation_prompt).ids
        got = theirs.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=True)
        assert got == expected, (template, conversation)
    assert theirs("What colour is the shape?")["input_ids"] == ours.encode("What colour is the shape?")
    assert "token_type_ids" not in theirs("What colour?")


def test_the_processor_puts_the_image_where_our_tools_do(tiny_run, exported):
    loaded = load_model(tiny_run)
    processor = transformers.AutoProcessor.from_pretrained(exported)
    image = next((tiny_run / "data" / "images" / "test").glob("*.png"))
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(image)},
                                                 {"type": "text", "text": "What colour is the shape?"}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    ids, images = prompt_inputs(loaded, "What colour is the shape?", str(image))
    assert inputs["input_ids"].tolist() == ids.tolist() and set(inputs) == {"input_ids", "attention_mask",
                                                                            "pixel_values"}
    generation = json.loads((exported / "generation_config.json").read_text())
    tokenizer = loaded.tokenizer
    assert generation["eos_token_id"] == stop_tokens("chatml", tokenizer) and generation["do_sample"] is False
    assert generation["pad_token_id"] == tokenizer.pad_id and generation["max_new_tokens"] == 64
    assert json.loads((exported / "chat_template.json").read_text())["chat_template"] == \
        json.loads((exported / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_the_image_processor_reproduces_our_image_mode(tmp_path, mode, tower):
    siglip = ["model.vision.pixel_mean=[0.5, 0.5, 0.5]", "model.vision.pixel_std=[0.5, 0.5, 0.5]",
              "model.vision.class_token=false", "model.vision.pre_norm=false", "model.vision.stem_bias=true",
              "model.vision.norm_output=true"] if tower == "siglip" else []
    cfg = load_config(None, [f"data.image_mode={mode}", *siglip])
    v = cfg.model.vision
    settings = image_processor_config(v, v.pixel_mean, v.pixel_std, mode)
    assert settings.pop("image_processor_type") == "LlavaImageProcessor"
    processor = transformers.LlavaImageProcessor(**settings)
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    source.save(tmp_path / "square.png")
    odd = tmp_path / "odd.png"   # 40 x 61: in crop mode the long side resizes to 48.8 pixels, truncated to 48
    Image.fromarray(rng.integers(0, 256, (61, 40, 3), dtype=np.uint8)).save(odd)
    paths = [widen(tmp_path / "square.png", tmp_path / f"wide{axis}.png", axis) for axis in (0, 1)]
    for path in paths + [odd]:   # taller (48 x 32) and wider (32 x 48) copies: the mode matters there
        ours = of(cfg).image_config(cfg).load(path).float() / 255
        ours = (ours - torch.tensor(v.pixel_mean)[:, None, None]) / torch.tensor(v.pixel_std)[:, None, None]
        theirs = processor(Image.open(path), return_tensors="pt")["pixel_values"][0]
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_twenty_demo_questions_get_the_same_reply_through_transformers(tiny_run, exported, tmp_path):
    rows = agreement(tiny_run, exported, 20, tmp_path)
    assert len(rows) == 20 and sum(Image.open(image).size[0] != Image.open(image).size[1] for _, image, _, _ in rows) == 10
    assert any(ours for _, _, ours, _ in rows)   # the tiny run does answer something
    assert [theirs for *_, theirs in rows] == [ours for _, _, ours, _ in rows]
