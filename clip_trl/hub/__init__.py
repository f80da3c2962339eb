"""Share and reuse fine-tuned CLIP models: one loader for full models and adapters, a LoRA preset, an offline Hub
for rehearsals, and the model cards.

A clip_trl run saves one of two things:

- a **full model** (no `peft_config`): a plain transformers folder (`config.json`, `model.safetensors`)
  that `AutoModel.from_pretrained` loads;
- an **adapter** (with `peft_config`): `adapter_config.json` and `adapter_model.safetensors`, a few
  percent of the model's size, which peft puts back onto the base model named in the adapter config.

Both also hold the processor files, the model card (`README.md`) and, after training, `training_curves.png`.
[`load_model`][clip_trl.hub.loading.load_model] tells the two apart and returns a ready `(model, processor)` pair
either way, from a local folder or a Hub repository (through the Hub cache, so `HF_HUB_OFFLINE=1` works once the
files are cached).

The modules: `loading` (`load_model`, `default_lora_config`), `local` (`local_hub`, a Hub on disk), `model_card`,
`citations` and `templates/` (the card's content).
"""

from __future__ import annotations

from clip_trl.hub.loading import default_lora_config, load_model, warn_if_base_is_local
from clip_trl.hub.local import LocalHub, local_hub
from clip_trl.models.lora import DEFAULT_LORA_TARGET_MODULES

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "LocalHub",
    "default_lora_config",
    "load_model",
    "local_hub",
    "warn_if_base_is_local",
]
