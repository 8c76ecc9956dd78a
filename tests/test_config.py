"""Run configs: TOML plus dotted overrides, with errors that name the key."""
import pytest

from minilvlm.config import ConfigError, RunConfig, to_dict
from minilvlm.recipes import config_from_dict as from_dict
from minilvlm.recipes import load_config


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_demo_and_validate():
    cfg = load_config()
    assert cfg.model.recipe == "llava" and cfg.data.dataset == "demo"
    assert cfg.train.global_batch % cfg.train.micro_batch == 0


def test_toml_and_overrides(tmp_path):
    path = write(tmp_path, """
[model]
projector = "linear"
[model.vision]
dim = 48
[optim]
lr = 1          # an int where a float is expected is fine
betas = [0.9, 0.95]
[train]
stage = "pretrain"
""")
    cfg = load_config(path, ["optim.lr=1e-4", "train.precision=bf16-autocast", "model.decoder.n_layers=5",
                             "data.template=vicuna_v1", "optim.projector_lr=3e-3", "data.demo_sizes.train=50"])
    assert cfg.model.projector == "linear" and cfg.model.vision.dim == 48
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.projector_lr == 3e-3
    assert cfg.train.stage == "pretrain" and cfg.train.precision == "bf16-autocast"
    assert cfg.model.decoder.n_layers == 5 and cfg.data.template == "vicuna_v1"
    assert cfg.data.demo_sizes == {"train": 50, "val": 300, "test": 600}


def test_unknown_key_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'; did you mean 'optim.lr'\?"):
        load_config(None, ["optim.lrr=1e-3"])
    path = write(tmp_path, "[train]\nglobal_bach = 64\n")
    with pytest.raises(ConfigError, match=r"run.toml: unknown key 'train.global_bach'; did you mean 'train.global_batch'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'; did you mean 'optim'"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'model.vision.dimm'; did you mean 'model.vision.dim'"):
        load_config(None, ["model.vision.dimm=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.demo_sizes.tarin'"):
        load_config(None, ["data.demo_sizes.tarin=3"])


def test_wrong_types_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.steps': expected int, got str 'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"'train.bf16': expected true or false, got 1"):
        load_config(None, ["train.bf16=1"])
    with pytest.raises(ConfigError, match=r"'train.steps': expected an integer, got True"):
        load_config(None, ["train.steps=true"])
    with pytest.raises(ConfigError, match=r"'optim.lr': expected float"):
        load_config(write(tmp_path, '[optim]\nlr = "fast"\n'))
    with pytest.raises(ConfigError, match=r"'model.vision' is a section"):
        load_config(None, ["model.vision=3"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[optim\nlr=1"))


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="multiple of train.micro_batch"):
        load_config(None, ["train.global_batch=30", "train.micro_batch=8"])
    with pytest.raises(ConfigError, match="train.stage: the llava recipe's stages are 'pretrain' .*; 'finetune' .*; got 'sft'"):
        load_config(None, ["train.stage=sft"])
    with pytest.raises(ConfigError, match="optim.schedule"):
        load_config(None, ["optim.schedule=linear"])


def test_round_trip_through_a_dict():
    cfg = load_config(None, ["optim.lr=5e-4", "model.vision.patch_size=4"])
    again = from_dict(to_dict(cfg))
    assert again == cfg and isinstance(again, RunConfig)


def test_shipped_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.toml")):   # their weight and data paths are placeholders to set
        load_config(path, check_paths=False)
    assert load_config(root / "demo_text_only.toml").data.blank_images
    with pytest.raises(ConfigError, match="model.mma.vision_weights = '.*weights/clip-vit-large-patch14': no such file"):
        load_config(root / "lavin_llama7b_sqa.toml")


def test_demo_toml_is_the_defaults_and_the_baseline_only_blanks_images():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(root / "demo.toml") == load_config()
    baseline = load_config(root / "demo_text_only.toml")
    assert baseline.data.blank_images and baseline.train.run_dir != "runs/demo"
    assert load_config(root / "demo_text_only.toml", ["data.blank_images=false", "train.run_dir=runs/demo"]) == load_config()


def test_derived_decoder_fields_follow_their_sources():
    cfg = load_config(None, ["model.decoder.n_heads=2", "model.decoder.dim=16"])
    assert cfg.model.decoder.n_kv_heads == 2 and cfg.model.decoder.head_dim == 8
    cfg = load_config(None, ["model.decoder.n_heads=4", "model.decoder.n_kv_heads=2"])
    assert cfg.model.decoder.n_kv_heads == 2


def test_device_and_precision_settings():
    assert load_config().train.device == "auto" and load_config().train.precision == "fp32"
    for device in ("cpu", "cuda", "cuda:3", "meta"):
        assert load_config(None, [f"train.device={device}"]).train.device == device
    with pytest.raises(ConfigError, match="train.device: 'gpu' is not a device; expected auto, cpu, cuda, cuda:N or meta"):
        load_config(None, ["train.device=gpu"])
    with pytest.raises(ConfigError, match="train.precision: expected one of fp32, bf16, bf16-autocast, fp16-autocast, got 'fp8'"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="train.peak_tflops = -1.0: expected a finite number >= 0"):
        load_config(None, ["train.peak_tflops=-1"])


def test_the_old_bf16_switch_still_works_and_says_it_is_deprecated():
    with pytest.warns(FutureWarning, match='train.bf16 is deprecated; it now means train.precision = "bf16-autocast"'):
        cfg = load_config(None, ["train.bf16=true"])
    assert cfg.train.precision == "bf16-autocast" and cfg.train.bf16 is False
    with pytest.raises(ConfigError, match="train.bf16 = true asks for bf16 autocast, but train.precision = 'fp16-autocast'"):
        load_config(None, ["train.bf16=true", "train.precision=fp16-autocast"])
