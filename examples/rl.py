"""RL fine-tuning of a CLIP model with `ClipRLTrainer`: CLIP as a policy that picks a caption for an image.

Flags are the fields of `RLScriptArguments` (data, `--reward_funcs`), `ClipRLConfig` (training) and trl's
`ModelConfig` (model, LoRA); `--config file.yaml` sets any of them, and flags override the file.

Without `--model_name_or_path`, RL starts from the contrastive model in `--contrastive_model_dir` (default
`clip_finetuned/`, what `examples/contrastive.py --config examples/configs/contrastive.yaml` writes) and, when
there is none, trains one there first.

```bash
python examples/contrastive.py --config examples/configs/contrastive.yaml   # -> clip_finetuned/
python examples/rl.py --config examples/configs/rl.yaml                      # -> clip_rl_finetuned/
accelerate launch examples/rl.py --config examples/configs/rl.yaml \
    --reward_funcs correctness confidence_correctness --reward_weights 1.0 0.5
```

The model, its processor and model card are saved to `--output_dir`; the test-split metrics are printed and
written to `<output_dir>/test_results.json`.
"""

from trl import ModelConfig, TrlParser

from clip_trl import ClipRLConfig
from clip_trl.cli import parse_dataclasses
from clip_trl.cli.errors import reported_errors
from clip_trl.scripts.arguments import RLScriptArguments
from clip_trl.scripts.common import evaluate_on_test
from clip_trl.scripts.data import load_data
from clip_trl.scripts.rl import run_rl


def main(script_args: RLScriptArguments, training_args: ClipRLConfig, model_args: ModelConfig) -> dict:
    data = load_data(script_args)
    trainer = run_rl(script_args, training_args, model_args, data=data)  # trains and saves
    metrics = evaluate_on_test(trainer, data, script_args)  # prints the test metrics (once) and writes them
    if trainer.is_world_process_zero():
        print(f"Model saved to {training_args.output_dir}; test metrics in test_results.json there.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return metrics


if __name__ == "__main__":
    parser = TrlParser((RLScriptArguments, ClipRLConfig, ModelConfig))
    # `parser.parse_args_and_config()`, reporting a mistyped flag or config key the argparse way (exit 2).
    with reported_errors():  # under several processes: the error once (rank 0), one line per other rank
        main(*parse_dataclasses(parser))
