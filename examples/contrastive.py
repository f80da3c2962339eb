"""Contrastive fine-tuning of a CLIP model with `ClipContrastiveTrainer`, the TRL way.

Flags are the fields of `ScriptArguments` (data), `ClipContrastiveConfig` (training) and trl's `ModelConfig`
(model, LoRA); `--config file.yaml` sets any of them, and flags override the file.

Offline (the emoji data set and a random small CLIP, ~4 minutes on 2 CPU cores):

```bash
python examples/contrastive.py --config examples/configs/contrastive.yaml
```

With a network, e.g. LoRA on OpenAI's CLIP and a Hub data set, on every GPU of the machine:

```bash
accelerate launch examples/contrastive.py --config examples/configs/contrastive.yaml \
    --model_name_or_path openai/clip-vit-base-patch32 --dataset_name <hub id> --caption_column text \
    --learning_rate 1e-5 --use_peft --lora_r 16 --output_dir clip-lora
```

The model, its processor and model card are saved to `--output_dir`; the test-split metrics are printed and
written to `<output_dir>/test_results.json`.
"""

from trl import ModelConfig, TrlParser

from clip_trl import ClipContrastiveConfig
from clip_trl.cli import parse_dataclasses
from clip_trl.cli.errors import reported_errors
from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.common import evaluate_on_test
from clip_trl.scripts.contrastive import run_contrastive
from clip_trl.scripts.data import load_data


def main(script_args: ScriptArguments, training_args: ClipContrastiveConfig, model_args: ModelConfig) -> dict:
    data = load_data(script_args)
    trainer = run_contrastive(script_args, training_args, model_args, data=data)  # trains and saves
    metrics = evaluate_on_test(trainer, data, script_args)  # prints the test metrics (once) and writes them
    if trainer.is_world_process_zero():
        print(f"Model saved to {training_args.output_dir}; test metrics in test_results.json there.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return metrics


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, ClipContrastiveConfig, ModelConfig))
    # `parser.parse_args_and_config()`, reporting a mistyped flag or config key the argparse way (exit 2).
    with reported_errors():  # under several processes: the error once (rank 0), one line per other rank
        main(*parse_dataclasses(parser))
