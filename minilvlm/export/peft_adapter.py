"""A LoRA run's adapter as `peft` saves one (adapter_config.json + adapter_model.safetensors), for
`PeftModel.from_pretrained(base, adapter)` over the exported base model.

Names are those of the modules that transformers builds (and peft wraps), prefixed with
`base_model.model.`: the LoRA matrices of a target as `<module>.lora_A.weight` (our lora_a) and
`<module>.lora_B.weight` (lora_b); the other tensors that trained (the projector) as
`modules_to_save`, under their module's own names. In a LLaVA those are transformers' module paths
(model.language_model.*, model.multi_modal_projector.*), which differ from the legacy checkpoint
names of the base folder (minilvlm.weights.llava.in_layout). peft computes
W x + (lora_alpha / r) B A x, as our LoRALinear does; the export writes our rank, alpha and dropout."""
import re

from minilvlm.io import atomic_save_safetensors, atomic_write_json
from minilvlm.models.lora import is_lora_key, lora_modules
from minilvlm.weights.llava import in_layout

PREFIX = "base_model.model."


def _target_regex(modules):
    """One regex that fully matches exactly these module paths: a path's first index (the layer)
    becomes a group of the indices that share the rest of the path."""
    templates = {}
    for module in modules:
        match = re.search(r"\.(\d+)\.", module)
        if match is None:
            templates.setdefault(re.escape(module), set())
            continue
        template = re.escape(module[:match.start()]) + r"\.{}\." + re.escape(module[match.end():])
        templates.setdefault(template, set()).add(int(match.group(1)))
    alternatives = [t.format("(?:" + "|".join(str(i) for i in sorted(idx)) + ")") if idx else t
                    for t, idx in sorted(templates.items())]
    return "(?:" + "|".join(alternatives) + ")"


def adapter(model, rename, llava, trained):
    """(adapter tensors, adapter_config dict). rename: our parameter name -> its name in the exported
    base checkpoint (None when it has none); llava: whether that is a LLaVA folder (legacy names to
    module paths); trained: {our name: tensor} of what trained (the run's checkpoint)."""
    def module_path(our_name):
        hf = rename(our_name)
        if hf is None:
            raise ValueError(f"{our_name} has no place in the exported model")
        return in_layout(hf, "modules") if llava else hf

    tensors, targets, lora = {}, [], None
    for name, module in lora_modules(model).items():
        path = module_path(f"{name}.weight").removesuffix(".weight")
        targets.append(path)
        tensors[f"{PREFIX}{path}.lora_A.weight"] = module.lora_a.detach()
        tensors[f"{PREFIX}{path}.lora_B.weight"] = module.lora_b.detach()
        lora = module
    saved = set()
    for name, tensor in trained.items():
        if not is_lora_key(name):
            path = module_path(name)
            saved.add(path.split(".")[1] if llava else path.rsplit(".", 2)[0])
            tensors[PREFIX + path] = tensor.detach()
    config = {"peft_type": "LORA", "task_type": None if llava else "CAUSAL_LM", "r": lora.rank,
              "lora_alpha": lora.alpha, "lora_dropout": getattr(lora.lora_dropout, "p", 0.0),
              "target_modules": _target_regex(targets), "modules_to_save": sorted(saved) or None, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
              "inference_mode": True, "base_model_name_or_path": "../base"}
    return tensors, config


def write_adapter(out, tensors, config):
    """out/adapter_model.safetensors and out/adapter_config.json. Returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors({k: v.cpu() for k, v in tensors.items()}, out / "adapter_model.safetensors",
                            {"format": "pt"})
    atomic_write_json(config, out / "adapter_config.json")
    return ["adapter_model.safetensors", "adapter_config.json"]
