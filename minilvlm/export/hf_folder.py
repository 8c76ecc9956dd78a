"""Export a trained model to a Hugging Face folder that `transformers` loads: a llava-recipe model as
LlavaForConditionalGeneration, or its decoder alone as LlamaForCausalLM / Qwen2ForCausalLM /
PhiForCausalLM. The inverse of minilvlm.weights: the same key maps, read the other way.

Like torchtitan's state-dict adapters (`to_hf`), the export is a pure renaming of our state dict;
it checks that every one of our tensors lands under exactly one HF name, and fails listing any that
would not. The LLaVA folder uses the checkpoint names transformers itself saves (language_model.model.*,
vision_tower.*, multi_modal_projector.*), which older and newer transformers versions both load."""
import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.eval.load import LoadError, load_model, resolve_checkpoint
from minilvlm.export.hf_configs import (
    ExportError,
    decoder_config,
    decoder_model_type,
    image_processor_config,
    llava_config,
    vision_model_type,
)
from minilvlm.export.chat import generation_config, jinja_template
from minilvlm.export.peft_adapter import adapter, write_adapter
from minilvlm.io import atomic_save_safetensors, atomic_write_json, atomic_write_with
from minilvlm.models.llava import LLaVA
from minilvlm.models.lora import base_state_dict, has_lora, merged_state_dict
from minilvlm.recipes.run_folder import read_state
from minilvlm.weights import ARCHITECTURES, WeightsError, by_key_map, to_hf_names
from minilvlm.weights.llava import PROJECTOR_KEYS, part_renamer, projector_renamer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD_BYTES = 5 * 10 ** 9    # "5GB", transformers' default shard size
_SIZE_UNITS = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "B": 1}
# Everything an export writes; with --force these are replaced (stale shards too), nothing else is touched.
_EXPORT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
                 "processor_config.json", "chat_template.json", "generation_config.json")


# ---- state dicts: our names -> HF names ----------------------------------------------------------

def _hf_names(state, parts):
    """weights.to_hf_names, its error as an ExportError."""
    try:
        return to_hf_names(state, parts)
    except WeightsError as err:
        raise ExportError(str(err)) from None


def hf_parts(model, prefix=""):
    """[(our name prefix, renamer of the rest)] for weights.to_hf_names: a Decoder's causal-LM names,
    or a LLaVA's under transformers' LLaVA checkpoint names (minilvlm.weights.llava's legacy layout,
    which every transformers loads)."""
    if not isinstance(model, LLaVA):
        return [("", by_key_map(ARCHITECTURES[decoder_model_type(model.config)][2], prefix))]
    c = model.config
    if c.projector not in PROJECTOR_KEYS:
        raise ExportError(f"projector {c.projector!r} cannot be exported; supported: {sorted(PROJECTOR_KEYS)}")
    return [("vision.", part_renamer("vision", vision_model_type(c.vision))),
            ("projector.", projector_renamer(c.projector)),
            ("lm.", part_renamer("lm", decoder_model_type(c.decoder)))]


def hf_name(parts, name):
    """Our tensor name -> its exported name under `hf_parts`, or None."""
    return next((rename(name[len(prefix):]) for prefix, rename in parts if name.startswith(prefix)), None)


def decoder_state_dict(decoder, prefix="", state=None):
    """The decoder's tensors (`state`, default its state_dict) under its HF causal-LM names (a tied
    head has none: transformers ties it)."""
    return _hf_names(decoder.state_dict() if state is None else state, hf_parts(decoder, prefix))


def llava_state_dict(model: LLaVA, state=None):
    """The whole model's tensors (`state`, default its state_dict) under transformers' LLaVA
    checkpoint names."""
    c = model.config
    out = _hf_names(model.state_dict() if state is None else state, hf_parts(model))
    if c.projector == "linear":  # HF's second projector layer, as the identity (see PROJECTOR_ACTS)
        weight = out["multi_modal_projector.linear_1.weight"]
        out["multi_modal_projector.linear_2.weight"] = torch.eye(c.decoder.dim, dtype=weight.dtype)
        out["multi_modal_projector.linear_2.bias"] = torch.zeros(c.decoder.dim, dtype=weight.dtype)
    return out


def parse_size(text):
    """"5GB" (powers of 1000, as transformers reads them), "500MiB" (powers of 1024) or plain bytes."""
    upper = text.strip().upper()
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if upper.endswith(unit):
            number, scale = upper[: -len(unit)], _SIZE_UNITS[unit]
            break
    else:
        number, scale = upper, 1
    try:
        size = int(float(number) * scale)
    except ValueError:
        size = 0
    if size <= 0:
        raise ExportError(f"--max-shard-size {text!r} is not a positive size; write e.g. 5GB, 500MB, 2GiB "
                          "or a byte count")
    return size


# ---- writing -------------------------------------------------------------------------------------

def prepare_output(out, force):
    """Refuse a non-empty output folder unless force; with force, remove the files an earlier export
    wrote there (so no stale shard or index is left beside the new weights)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose an output folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"{out} exists and is not empty; choose a new folder, or pass --force to replace "
                              f"the export files in it")
        for path in out.iterdir():
            if path.is_file() and (path.name in _EXPORT_FILES or
                                   (path.name.startswith("model-") and path.name.endswith(".safetensors"))):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_safetensors(tensors, out, max_shard_bytes=DEFAULT_SHARD_BYTES):
    """model.safetensors, or model-0000i-of-0000n.safetensors shards (in name order, each at most
    max_shard_bytes unless one tensor is larger) with model.safetensors.index.json. Returns the files."""
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        atomic_save_safetensors(shards[0], out / "model.safetensors", metadata)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        atomic_save_safetensors(shard, out / name, metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic_write_json({"metadata": {"total_size": total}, "weight_map": weight_map},
                      out / "model.safetensors.index.json")
    return [*names, "model.safetensors.index.json"]


def special_token_ids(tokenizer):
    return {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}


def _save_tokenizer_json(tokenizer, path):
    """tokenizer.json without its post-processor: our templates place bos/eos themselves, so
    `tokenizer(text)` in transformers gives the ids our Tokenizer.encode gives."""
    def write(tmp):
        tokenizer.save(tmp)
        data = json.loads(Path(tmp).read_text())
        data["post_processor"] = None
        Path(tmp).write_text(json.dumps(data, ensure_ascii=False))
    atomic_write_with(path, write)


def write_tokenizer(tokenizer, out, max_len, image_token=False, chat_template=None):
    """tokenizer.json (ours, with the image token among its added tokens), a tokenizer_config.json for
    transformers' fast tokenizer (with the run's chat_template, and no token_type_ids among its
    inputs, which LLaVA's generate refuses) and special_tokens_map.json."""
    _save_tokenizer_json(tokenizer, out / "tokenizer.json")
    special = {f"{name}_token": token for name, token in
               (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token), ("pad", tokenizer.pad_token))
               if token is not None}
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        special["pad_token"] = tokenizer.eos_token   # our pad id falls back to eos; say so explicitly
    if image_token:
        special["image_token"] = tokenizer.image_token
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"], **special}
    if chat_template is not None:
        config["chat_template"] = chat_template
    atomic_write_json(config, out / "tokenizer_config.json")
    atomic_write_json(special, out / "special_tokens_map.json")
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def _cast(tensors, dtype):
    """The tensors on the CPU (safetensors writes host memory), floating ones in `dtype` when given."""
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu() for k, v in tensors.items()}


def _dtype_name(tensors):
    floats = {v.dtype for v in tensors.values() if v.is_floating_point()}
    return str(floats.pop()).removeprefix("torch.") if len(floats) == 1 else "float32"


def export_decoder(decoder, tokenizer, out, *, dtype=None, max_shard_bytes=DEFAULT_SHARD_BYTES, force=False,
                   template=None, state=None):
    """Write `decoder` (our Decoder; its tensors `state`, default its own) as a transformers causal-LM
    folder, chatting with our `template` when given. Returns a summary dict."""
    config = decoder_config(decoder.config, special_token_ids(tokenizer))
    tensors = _cast(decoder_state_dict(decoder, state=state), dtype)
    config["torch_dtype"] = _dtype_name(tensors)
    return _write(out, force, config, tensors, tokenizer, decoder.config.max_seq_len, max_shard_bytes,
                  template=template)


def export_llava(model, tokenizer, out, *, dtype=None, max_shard_bytes=DEFAULT_SHARD_BYTES, force=False,
                 template=None, image_mode="crop", state=None):
    """Write a LLaVA (ours; its tensors `state`, default its own) as a transformers
    LlavaForConditionalGeneration folder, with the image processor reproducing `image_mode`, the
    processor config and, given our `template`, its chat template. Returns a summary dict."""
    c = model.config
    tensors = _cast(llava_state_dict(model, state), dtype)
    config = llava_config(c, special_token_ids(tokenizer), _dtype_name(tensors))
    if tokenizer.image_token_id != c.image_token_id:
        raise ExportError(f"the tokenizer's {tokenizer.image_token!r} is id {tokenizer.image_token_id}, but the "
                          f"model reads image_token_id {c.image_token_id}; export with the run's own tokenizer")
    extra = {
        "preprocessor_config.json": image_processor_config(c.vision, c.vision.pixel_mean, c.vision.pixel_std,
                                                           image_mode),
        # LlavaProcessor expands each <image> to image_seq_length ids: patches (+1 for a class token,
        # -1 again for the "default" strategy that drops it)
        "processor_config.json": dict(processor_class="LlavaProcessor", image_token=tokenizer.image_token,
                                      patch_size=c.vision.patch_size,
                                      vision_feature_select_strategy=config["vision_feature_select_strategy"],
                                      num_additional_image_tokens=int(c.vision.class_token)),
    }
    return _write(out, force, config, tensors, tokenizer, c.decoder.max_seq_len, max_shard_bytes, extra, template)


def _write(out, force, config, tensors, tokenizer, max_len, max_shard_bytes, extra=None, template=None):
    out = prepare_output(out, force)
    files = write_safetensors(tensors, out, max_shard_bytes)
    atomic_write_json(config, out / "config.json")
    chat = jinja_template(template, tokenizer) if template else None
    files += ["config.json", *write_tokenizer(tokenizer, out, max_len, extra is not None, chat)]
    extra = dict(extra or {})
    if template:
        extra["generation_config.json"] = generation_config(template, tokenizer)
        if "processor_config.json" in extra:   # LlavaProcessor reads its own chat template
            extra["chat_template.json"] = {"chat_template": chat}
    for name, content in extra.items():
        atomic_write_json(content, out / name)
        files.append(name)
    arch = config["architectures"][0]
    return {"out": str(out), "architecture": arch, "files": files, "tensors": len(tensors),
            "parameters": sum(t.numel() for t in tensors.values())}


# ---- a run folder --------------------------------------------------------------------------------

LORA_MODES = ("merged", "adapter")


def export_run(path, out, *, decoder_only=False, dtype=None, max_shard_bytes=DEFAULT_SHARD_BYTES, force=False,
               device="auto", lora="merged"):
    """Export the newest checkpoint of a run folder (or a checkpoint folder) written by tools/train.py:
    the LLaVA model, or with decoder_only its decoder alone, chatting with the run's template and
    reading images in the run's image mode. A LoRA run exports merged (its updates added into the
    weights), or with lora="adapter" as the base folder out/base and a peft adapter out/adapter.
    Returns the summary of export_llava / export_decoder, plus the checkpoint it came from."""
    if lora not in LORA_MODES:
        raise ExportError(f"--lora: expected one of {', '.join(LORA_MODES)}, got {lora!r}")
    folder = _export_checkpoint(path)
    try:
        loaded = load_model(folder, device=device)
    except (LoadError, ConfigError, SafetensorError, OSError) as err:
        raise ExportError(f"cannot load {folder}: {err}") from None
    model, cfg = loaded.model, loaded.cfg
    if lora == "adapter" and not has_lora(model):
        raise ExportError("--lora adapter: this run has no LoRA (model.lora.rank is 0); export it without --lora")
    options = dict(dtype=dtype, max_shard_bytes=max_shard_bytes, force=force, template=cfg.data.template)
    part = model.lm if decoder_only else model
    if lora == "adapter":
        summary = _export_adapter(loaded, part, Path(out), options)
    else:
        summary = _export(part, loaded, out, options, merged_state_dict(part))
    summary["checkpoint"] = str(folder)
    return summary


def _export(part, loaded, out, options, state):
    if isinstance(part, LLaVA):
        return export_llava(part, loaded.tokenizer, out, image_mode=loaded.cfg.data.image_mode, state=state, **options)
    return export_decoder(part, loaded.tokenizer, out, state=state, **options)


def _export_adapter(loaded, part, out, options):
    """out/base: the model without its LoRA updates (and with the trained projector); out/adapter:
    the peft adapter over it."""
    summary = _export(part, loaded, out / "base", options, base_state_dict(part))
    llava, parts = isinstance(part, LLaVA), hf_parts(part)
    trained = loaded.recipe.checkpoint_state(loaded.model)
    if not llava:
        trained = {k[len("lm."):]: v for k, v in trained.items() if k.startswith("lm.")}
    try:
        tensors, config = adapter(part, lambda name: hf_name(parts, name), llava, trained)
    except (ValueError, ExportError) as err:
        raise ExportError(f"--lora adapter: {err}") from None
    files = write_adapter(out / "adapter", tensors, config)
    summary.update(out=str(out), files=[f"base/{f}" for f in summary["files"]] + [f"adapter/{f}" for f in files],
                   adapter_tensors=len(tensors))
    return summary


def _export_checkpoint(path):
    """The checkpoint folder of a run to export; ExportError when its recipe has no export."""
    try:
        folder, _ = resolve_checkpoint(path)
        state = read_state(folder)
    except (LoadError, OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read the run {path}: {err}") from None
    if "config" not in state:
        raise ExportError(f"{folder / 'state.json'} has no 'config' entry; it was not written by tools/train.py")
    model_section = state["config"].get("model", {})   # read before validating: other recipes need more
    name = model_section.get("recipe", "llava") if isinstance(model_section, dict) else "llava"
    if name not in recipes.names():
        raise ExportError(f"export supports the llava recipe; {name!r} is not a recipe minilvlm knows")
    refusal = recipes.get(name).export_refusal()
    if refusal:
        raise ExportError(f"export supports the llava recipe; {refusal}")
    return folder
