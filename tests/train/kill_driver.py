"""Run tools/train.py in this process, dying by SIGKILL in the middle of a checkpoint write.

    python -m tests.train.kill_driver KILL_AT_STEP [train.py arguments]

When the checkpoint of step KILL_AT_STEP writes its optimizer file, the driver writes half of it
to the temporary path the atomic writer would use, then kills itself: what a power cut or the
OOM killer does mid-save."""
import os
import signal
import sys
from pathlib import Path

import minilvlm.train.checkpoint as checkpoint
from minilvlm.io import atomic_save_safetensors


def main():
    kill_at = f"step_{int(sys.argv[1]):06d}"
    real = atomic_save_safetensors

    def dying_save(tensors, path, metadata=None):
        path = Path(path)
        if path.parent.name == kill_at and path.name == "optim.safetensors":
            tmp = path.with_name(path.name + ".tmp-killed")
            with open(tmp, "wb") as f:
                f.write(b"\0" * 1000)  # a partial write
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real(tensors, path, metadata=metadata)

    checkpoint.atomic_save_safetensors = dying_save
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import train as train_tool
    sys.exit(train_tool.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
