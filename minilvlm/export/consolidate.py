"""An FSDP run's checkpoint (torch.distributed.checkpoint shards in checkpoints/step_N/dcp/) as one
model.safetensors beside the shards, as a one-process run writes it: the model is rebuilt from the
checkpoint's config, the shards gathered into it in this process, and what the recipe's checkpoints
hold (the whole model, or what trained) saved."""
from minilvlm.eval.load import load_model
from minilvlm.export.hf_configs import ExportError
from minilvlm.io import atomic_save_safetensors


def consolidate_checkpoint(path, device="cpu"):
    """Write model.safetensors into the checkpoint at `path` (a checkpoint folder, or a run folder: its
    newest); returns (the file written, tensor count, value count)."""
    loaded = load_model(path, device=device)
    out = loaded.checkpoint / "model.safetensors"
    if out.exists():
        raise ExportError(f"{out} exists already; this checkpoint needs no consolidation")
    tensors = loaded.recipe.checkpoint_state(loaded.model)
    atomic_save_safetensors(tensors, out)
    return out, len(tensors), sum(t.numel() for t in tensors.values())
