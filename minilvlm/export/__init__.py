"""Export to Hugging Face folders that `transformers` loads: a llava-recipe run as
LlavaForConditionalGeneration, or its decoder alone as a causal LM (hf_folder.py), with the
config.json dicts built from our configs (hf_configs.py), the run's chat template and generation
settings (chat.py), and a LoRA run's peft adapter (peft_adapter.py). consolidate.py writes an FSDP
run's sharded checkpoint as one model.safetensors."""
from minilvlm.export.consolidate import consolidate_checkpoint
from minilvlm.export.hf_configs import ExportError
from minilvlm.export.hf_folder import (
    DTYPES,
    LORA_MODES,
    decoder_state_dict,
    export_decoder,
    export_llava,
    export_run,
    llava_state_dict,
    parse_size,
)

__all__ = ["DTYPES", "LORA_MODES", "ExportError", "consolidate_checkpoint", "decoder_state_dict", "export_decoder", "export_llava", "export_run",
           "llava_state_dict", "parse_size"]
