"""Training: run setup (run.py), the step loop (loop.py), the final report (report.py),
checkpoints with optimizer and RNG state (checkpoint.py), torchrun setup (distributed.py), metrics
and progress (logging.py), and the from-scratch tower's pretraining (vision_pretrain.py)."""
