"""What the example scripts and the `clip-trl` command share: script arguments, data loading, and the two runs.

The scripts follow TRL's layout: `trl.TrlParser` parses three dataclasses — [`ScriptArguments`][clip_trl.scripts.arguments.ScriptArguments] (the data),
a trainer config ([`~clip_trl.ClipContrastiveConfig`] or [`~clip_trl.ClipRLConfig`]) and trl's `ModelConfig`
(the model, and LoRA through `--use_peft --lora_r ...`) — from flags and/or a `--config file.yaml`, then
hand them to [`run_contrastive`][clip_trl.scripts.contrastive.run_contrastive] or [`run_rl`][clip_trl.scripts.rl.run_rl]. Everything here also works under `accelerate launch`.

Offline defaults: without `--dataset_name` the data is the emoji set of [`clip_trl.offline.load_emoji_dataset`];
without `--model_name_or_path` the model is a randomly initialised small CLIP from
[`clip_trl.offline.build_clip`], saved to `<output_dir>/base_model` so that the run (and its model card) can
point at it. [`run_rl`][clip_trl.scripts.rl.run_rl] without a model starts from the contrastive model in `--contrastive_model_dir`,
training one first when that folder holds none.

The modules: `arguments` (the script dataclasses), `data` (loading and splitting), `common` (model, LoRA, saving,
test metrics), one module per method (`contrastive`, `rl`, `dpo`) and the whole workflow (`pipeline`,
`pipeline_results`).
"""
