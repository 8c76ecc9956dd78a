"""A tiny end-to-end run: the run folder's files, and --resume giving bitwise the same losses as an
uninterrupted run (deterministic mode, fixed seeds, no workers)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from minilvlm.recipes.run_folder import latest, read_state
from minilvlm.recipes import load_config
from minilvlm.train.loop import train

TINY = ["data.demo_sizes={train = 40, val = 8, test = 8}", "model.vision.dim=16", "model.vision.n_layers=2",
        "train.vision_pretrain_steps=5", "train.vision_pretrain_batch=8",
        "model.vision.n_heads=2", "model.vision.mlp_dim=16", "model.vision.patch_size=16",
        "model.decoder.dim=16", "model.decoder.n_layers=1", "model.decoder.n_heads=2", "model.decoder.mlp_dim=24",
        "train.global_batch=8", "train.micro_batch=4", "train.steps=6", "train.log_every=1",
        "train.eval_every=3", "train.ckpt_every=3", "train.deterministic=true", "optim.warmup_steps=2",
        "eval.max_new_tokens=3", "eval.samples=1"]


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def tool_main():
    path = Path(__file__).resolve().parents[2] / "tools" / "train.py"
    spec = importlib.util.spec_from_file_location("tools_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_tiny_run_writes_its_folder_and_resumes_bitwise(tmp_path, restore_determinism):
    full = tmp_path / "full"
    summary = train(load_config(None, TINY + [f"train.run_dir={json.dumps(str(full))}"]))
    assert summary["step"] == 6
    assert sum(n for k, n in summary["count"].items() if not k.startswith("task/")) == 8
    for name in ("metrics.jsonl", "metrics.png", "config.json", "tokenizer.json", "summary.json", "samples.jsonl"):
        assert (full / name).is_file(), name
    assert Image.open(full / "metrics.png").size == (720, 800)
    assert [s for s, _ in losses(full)] == [1, 2, 3, 4, 5, 6]
    assert latest(full).name == "step_000006"
    state = read_state(latest(full))
    assert state["step"] == 6 and state["data"]["sampler"]["epoch"] == 1   # 6 steps x 8 > 40 samples
    assert any(k.startswith("eval/") for k in json.loads((full / "metrics.jsonl").read_text().splitlines()[3]))

    split = tmp_path / "split"
    train(load_config(None, TINY + [f"train.run_dir={json.dumps(str(split))}", "train.stop_at=3"]))
    assert latest(split).name == "step_000003"
    assert tool_main()(["--resume", str(split), "train.stop_at=0"]) == 0
    assert losses(split) == losses(full)   # bitwise: the floats are compared exactly
    assert (split / "checkpoints" / "step_000006" / "model.safetensors").is_file()


def test_command_line_errors(capsys, tmp_path):
    main = tool_main()
    assert main(["optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_bf16_autocast_and_accumulation_run(tmp_path):
    run = tmp_path / "bf16"
    overrides = TINY + [f"train.run_dir={json.dumps(str(run))}", "train.precision=bf16-autocast", "train.steps=2",
                        "train.micro_batch=2", "train.eval_every=0", "optim.schedule=warm_restarts",
                        "optim.restart_steps=1", "train.deterministic=false"]
    summary = train(load_config(None, overrides))
    assert summary["step"] == 2
    rows = losses(run)
    assert len(rows) == 2 and all(loss == loss and loss > 0 for _, loss in rows)   # finite, not NaN


def test_metrics_report_memory_and_a_checkpoint_from_a_gpu_resumes_on_the_cpu_with_a_note(tmp_path, capsys):
    """A GPU run's checkpoint holds the CUDA generator's state beside the CPU's; resumed on the
    CPU, the run goes on and says that state does not carry over (nothing dropped silently)."""
    from safetensors.torch import load_file, save_file
    run = tmp_path / "run"
    train(load_config(None, TINY + [f"train.run_dir={json.dumps(str(run))}", "train.stop_at=3",
                                    "train.device=cpu"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mem/peak_rss_gb"] > 0.1 and "mfu" not in r for r in rows if "loss" in r)
    optim_file = latest(run) / "optim.safetensors"
    tensors = load_file(optim_file)
    assert "rng.torch" in tensors and "rng.cuda" not in tensors   # a CPU run has no CUDA state
    tensors["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)     # as a GPU run's checkpoint holds
    save_file(tensors, optim_file)
    capsys.readouterr()
    assert tool_main()(["--resume", str(run), "train.stop_at=0", "train.device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: the checkpoint's CUDA generator state (a GPU run) has no use on cpu" in err


def test_fp16_autocast_scales_the_loss_and_resumes_with_its_scale(tmp_path, restore_determinism):
    """fp16 on the CPU: the loss scale is logged every step, checkpointed, and a resumed run goes
    on from the saved scale with bitwise the same losses."""
    def run_at(run, *extra):
        return TINY + [f"train.run_dir={json.dumps(str(run))}", "train.precision=fp16-autocast",
                       "train.eval_every=0", *extra]
    full = tmp_path / "full"
    train(load_config(None, run_at(full)))
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    scales = [r["loss_scaler/scale"] for r in rows if "loss" in r]
    assert len(scales) == 6 and all(s >= 1.0 for s in scales)
    assert all(loss == loss and loss > 0 for _, loss in losses(full))
    split = tmp_path / "split"
    train(load_config(None, run_at(split, "train.stop_at=3")))
    assert read_state(latest(split))["loss_scaler"]["scale"] == scales[2]
    assert tool_main()(["--resume", str(split), "train.stop_at=0"]) == 0
    assert losses(split) == losses(full)


def test_pure_bf16_keeps_the_model_in_bf16_with_fp32_masters_and_resumes_bitwise(tmp_path, restore_determinism):
    """train.precision = "bf16": every parameter is bf16 (no autocast recasting), the optimizer holds
    fp32 master weights and moments, the checkpoint stores both, and a resume at step 3 gives the
    uninterrupted run's losses bit for bit."""
    from safetensors.torch import load_file
    from minilvlm.train.run import setup_run
    bf16 = TINY + ["train.precision=bf16", "train.eval_every=0"]
    full = tmp_path / "full"
    probe = tmp_path / "probe"
    run = setup_run(load_config(None, bf16 + [f"train.run_dir={json.dumps(str(probe))}"]), torch.device("cpu"), 0, 1)
    assert {p.dtype for p in run.model.parameters()} == {torch.bfloat16}
    assert run.optimizer.master_weights
    train(load_config(None, bf16 + [f"train.run_dir={json.dumps(str(full))}"]))
    model_file, optim_file = latest(full) / "model.safetensors", latest(full) / "optim.safetensors"
    assert {t.dtype for t in load_file(model_file).values()} == {torch.bfloat16}
    optim = load_file(optim_file)
    masters = [k for k in optim if k.endswith(".master")]
    assert masters and all(optim[k].dtype == torch.float32 for k in masters), sorted(optim)[:8]

    split = tmp_path / "split"
    train(load_config(None, bf16 + [f"train.run_dir={json.dumps(str(split))}", "train.stop_at=3"]))
    assert tool_main()(["--resume", str(split), "train.stop_at=0"]) == 0
    assert losses(split) == losses(full) and len(losses(full)) == 6
