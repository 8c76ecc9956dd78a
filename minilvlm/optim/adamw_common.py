"""What the flat and the tensor-list AdamW share: the hyperparameter checks, scalars made on the
params' device, and the one host read of a step's skip flag."""
import torch


def check_adamw_hyperparams(lr, betas, eps, weight_decay):
    if not lr >= 0.0:
        raise ValueError(f"invalid learning rate {lr}: must be >= 0")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"invalid betas {betas}: need two values in [0, 1)")
    if not eps >= 0.0:
        raise ValueError(f"invalid eps {eps}: must be >= 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")


def grad_scale_tensor(grad_scale, device, name="grad_scale"):
    """grad_scale (a float or a 1-element tensor) as a 1-element float32 tensor on `device`, or None.
    A float is filled in on the device (torch.full), not copied from the host."""
    if grad_scale is None:
        return None
    if isinstance(grad_scale, torch.Tensor):
        if grad_scale.numel() != 1:
            raise ValueError(f"{name} must have one element, got shape {tuple(grad_scale.shape)}")
        return grad_scale.detach().reshape(1).to(device=device, dtype=torch.float32)
    return torch.full((1,), float(grad_scale), dtype=torch.float32, device=device)


def read_skip_flag(found_inf):
    """Whether a step with this found_inf was skipped: the step's one host sync (False on meta, where
    there is no value to read, and without a flag)."""
    if not isinstance(found_inf, torch.Tensor):
        return bool(found_inf)
    return found_inf.device.type != "meta" and bool(found_inf.item())


def saved_state_by_param(param_groups, state_dict):
    """{param: saved state entry} for a state_dict of the same param groups (torch.optim.AdamW's layout),
    after taking the saved groups' hyperparameters."""
    saved_groups = state_dict["param_groups"]
    if len(param_groups) != len(saved_groups):
        raise ValueError(f"state_dict has {len(saved_groups)} param groups, the optimizer {len(param_groups)}")
    by_param = {}
    for gi, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(f"param group {gi}: state_dict has {len(saved['params'])} params, "
                             f"the optimizer {len(group['params'])}")
        for p, index in zip(group["params"], saved["params"]):
            if index in state_dict["state"]:
                by_param[p] = state_dict["state"][index]
    for group, saved in zip(param_groups, saved_groups):
        for key, value in saved.items():
            if key != "params":
                group[key] = tuple(value) if key == "betas" else value
    return by_param


def call_closure(closure):
    """closure()'s loss with autograd on (a step runs under no_grad), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
