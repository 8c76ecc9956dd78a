"""The default process group must really be destroyed by shutdown_distributed: a gloo group that
survives into interpreter shutdown can abort the process at exit (seen as a SIGABRT in CI)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter: in the pytest process torch._dynamo is long imported, which hides the problem.
SCRIPT = r"""
import os, sys, tempfile
import torch
from minilvlm.train.distributed import init_distributed, shutdown_distributed
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])

def gloo_threads():
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    return sum(n.startswith(("pt_gloo", "gloo")) for n in names)

init_distributed("cpu")
params = [torch.nn.Parameter(torch.ones(5))]
opt = torch.optim.AdamW(params)  # imports torch._dynamo lazily
torch.distributed.all_reduce(params[0].data)
torch.distributed.barrier()
assert gloo_threads() > 0, "expected gloo worker threads while the group exists"
del opt
shutdown_distributed()
print("gloo threads after shutdown:", gloo_threads())
"""


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shutdown_destroys_the_gloo_group():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(free_port())], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo threads after shutdown: 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
