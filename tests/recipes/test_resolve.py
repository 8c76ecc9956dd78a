"""A config completed from the folders it names (minilvlm/recipes/resolve.py): architecture from
config.json (and the image processor's mean and std), every disagreement with an explicit value in
one error, the tokenizer and the template picked for you, paths made absolute, and the dry run
showing the resolved sections."""
import json

import pytest

from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm.weights import SIGLIP_MEAN
from tests.models import hf_fixtures
from tests.models.hf_tokenizers import family_tokenizer
from tests.tools_main import tool_main

TEXTS = ["What colour is the shape? blue", "Reverse the letters of the word 'garden'. nedrag"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolve")
    hf_fixtures.clip_vision(root / "clip")
    hf_fixtures.siglip_vision(root / "siglip")
    for family in ("llama", "qwen2", "phi"):
        ids = family_tokenizer(root / family, family, TEXTS)
        getattr(hf_fixtures, family)(root / family, vocab_size=ids)
    return root


def _paths(folders, vision="clip", lm="llama"):
    return [f"model.vision_weights={json.dumps(str(folders / vision))}",
            f"model.lm_weights={json.dumps(str(folders / lm))}"]


def test_sections_come_from_the_folders_config_json(folders):
    notes = []
    cfg = load_config(None, _paths(folders), notes)
    v, d = cfg.model.vision, cfg.model.decoder
    assert (v.image_size, v.patch_size, v.dim, v.n_layers, v.n_heads, v.mlp_dim, v.act) == (30, 6, 48, 3, 4, 72,
                                                                                           "quick_gelu")
    assert (d.dim, d.n_layers, d.n_heads, d.n_kv_heads, d.mlp_dim, d.max_seq_len) == (64, 2, 4, 2, 96, 128)
    assert d.vocab_size == family_tokenizer(folders / "tmp", "llama", TEXTS)
    assert any(n.startswith("model.vision: from model.vision_weights = ") and "dim=48" in n for n in notes)
    assert any(n.startswith("model.decoder: from model.lm_weights = ") and "mlp_dim=96" in n for n in notes)


def test_every_disagreement_is_listed_at_once_and_the_context_length_may_differ(folders):
    with pytest.raises(ConfigError) as err:
        load_config(None, _paths(folders) + ["model.vision.dim=32", "model.vision.act=gelu", "model.decoder.n_layers=4",
                                             "model.decoder.dim=64", "model.decoder.max_seq_len=256"])
    message = str(err.value)
    assert message.startswith("the config disagrees with the weights it names (3):")
    for line in ("model.vision.dim: the config sets 32 but model.vision_weights", "has 48",
                 "model.vision.act: the config sets 'gelu'", "'quick_gelu'", "model.decoder.n_layers: the config sets 4"):
        assert line in message
    assert "max_seq_len" not in message and "decoder.dim" not in message
    cfg = load_config(None, _paths(folders) + ["model.decoder.dim=64", "model.decoder.max_seq_len=256"])
    assert cfg.model.decoder.max_seq_len == 256


def test_a_siglip_tower_takes_its_processors_mean_and_std(folders, tmp_path):
    cfg = load_config(None, _paths(folders, vision="siglip"))
    assert cfg.model.vision.pixel_mean == SIGLIP_MEAN and not cfg.model.vision.class_token
    (tmp_path / "config.json").write_text((folders / "clip" / "config.json").read_text())
    for name in (folders / "clip").glob("model*"):
        (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.4, 0.5, 0.6]}))
    cfg = load_config(None, [f"model.vision_weights={json.dumps(str(tmp_path))}"])
    assert cfg.model.vision.pixel_mean == (0.1, 0.2, 0.3) and cfg.model.vision.pixel_std == (0.4, 0.5, 0.6)


@pytest.mark.parametrize("lm, template, why", [("llama", "vicuna_v1", "the LM is llama"),
                                               ("qwen2", "chatml", "the tokenizer's chat_template writes chatml"),
                                               ("phi", "phi", "the LM is phi")])
def test_the_template_and_tokenizer_follow_the_lm(folders, lm, template, why):
    notes = []
    cfg = load_config(None, _paths(folders, lm=lm), notes)
    assert cfg.data.template == template and cfg.data.tokenizer == str(folders / lm)
    assert f"data.template: auto -> {template} ({why}" in "\n".join(notes)
    assert load_config(None, _paths(folders, lm=lm) + ["data.template=plain"]).data.template == "plain"


def test_the_demo_keeps_chatml_and_a_tokenizer_class_decides_without_an_lm(folders):
    notes = []
    assert load_config(None, [], notes).data.template == "chatml"
    assert notes == ["data.template: auto -> chatml (no chat_template or LM family to go by (the demo's template))"]
    assert load_config(None, [f"data.tokenizer={json.dumps(str(folders / 'phi'))}"]).data.template == "phi"
    with pytest.raises(ConfigError, match="data.template = .alpaca.: expected one of auto, plain, vicuna_v1, chatml, phi"):
        load_config(None, ["data.template=alpaca"])


def test_paths_are_made_absolute(folders, monkeypatch):
    monkeypatch.chdir(folders)
    cfg = load_config(None, ["model.lm_weights=llama", "data.image_root=images", "data.eval_file=held.json",
                             "model.mma.base_checkpoint=runs/x"], check_paths=False)   # only some exist
    assert cfg.model.lm_weights == str(folders / "llama") and cfg.data.tokenizer == str(folders / "llama")
    assert cfg.data.image_root == str(folders / "images") and cfg.data.eval_file == str(folders / "held.json")
    assert cfg.model.mma.base_checkpoint == str(folders / "runs" / "x") and cfg.data.dataset == "demo"


def test_wrong_kinds_of_folders_are_named(folders):
    with pytest.raises(ConfigError, match="model.lm_weights = .*clip' holds a 'clip_vision_model' model"):
        load_config(None, [f"model.lm_weights={json.dumps(str(folders / 'clip'))}"])
    with pytest.raises(ConfigError, match="model.init_from = .*llama: a Hugging Face folder there must be a LLaVA"):
        load_config(None, [f"model.init_from={json.dumps(str(folders / 'llama'))}"])


def test_the_dry_run_shows_the_resolved_sections(folders, capsys, monkeypatch):
    """tools/train.py prints what it resolved, then the dry run's report (the meta-device step itself
    is tests/train/test_devices.py's: here it is stood in, to see what the tool prints around it)."""
    main = tool_main("train")
    seen = []
    monkeypatch.setitem(main.__globals__, "dry_run", lambda cfg, nproc: seen.append(cfg) or {})
    monkeypatch.setitem(main.__globals__, "format_report", lambda report, source: "the report")
    assert main(_paths(folders, vision="siglip", lm="qwen2") + ["--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "config: model.vision: from model.vision_weights" in captured.err and "patch_size=7" in captured.err
    assert "config: model.decoder: from model.lm_weights" in captured.err and "rope_theta=1000000.0" in captured.err
    assert captured.out == "the report\n" and seen[0].model.decoder.dim == 48 and seen[0].model.vision.dim == 32


def test_a_base_run_of_ours_gives_its_template(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"config": {"data": {"template": "vicuna_v1"}}}))
    notes = []
    cfg = load_config(None, ["model.lora.rank=2", f"model.init_from={json.dumps(str(step))}"], notes)
    assert cfg.data.template == "vicuna_v1" and f"(the base run {step} was trained with it)" in notes[-1]
