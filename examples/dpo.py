"""Preference optimization (DPO / IPO) of a CLIP model with `ClipDPOTrainer`.

Flags are the fields of `DPOScriptArguments` (data, how pairs are made), `ClipDPOConfig` (training) and trl's
`ModelConfig` (model, LoRA); `--config file.yaml` sets any of them, and flags override the file.

The data needs `image`, `chosen` and `rejected` columns (names: `--chosen_column`, `--rejected_column`; a
rejected column may hold a list of captions). Without a rejected column, pairs are made from the captions:
the row's own caption against a near miss from the same `--group_column` (the offline emoji data: the right
emoji name against a similar name from the same CLDR group).

Offline, refining the contrastive model of `examples/contrastive.py`:

```bash
python examples/contrastive.py --config examples/configs/contrastive.yaml    # -> clip_finetuned/
python examples/dpo.py --config examples/configs/dpo.yaml                    # -> clip_dpo/
accelerate launch examples/dpo.py --config examples/configs/dpo.yaml --loss_type ipo --beta 0.5
```

The model, its processor and model card are saved to `--output_dir`; the test-split metrics (retrieval with the
chosen captions, and `test_rewards/accuracies`, `test_rewards/margins`, ...) are printed and written to
`<output_dir>/test_results.json`.
"""

from trl import ModelConfig, TrlParser

from clip_trl import ClipDPOConfig
from clip_trl.cli import parse_dataclasses
from clip_trl.cli.errors import reported_errors
from clip_trl.scripts.common import evaluate_on_test, print_metrics
from clip_trl.scripts.dpo import DPOScriptArguments, load_preference_data, run_dpo


def main(script_args: DPOScriptArguments, training_args: ClipDPOConfig, model_args: ModelConfig) -> dict:
    data = load_preference_data(script_args, training_args)
    trainer = run_dpo(script_args, training_args, model_args, data=data)  # trains and saves
    metrics = evaluate_on_test(trainer, data, script_args)
    if trainer.is_world_process_zero():
        print_metrics(metrics, f"Test split, model saved to {training_args.output_dir}:")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return metrics


if __name__ == "__main__":
    parser = TrlParser((DPOScriptArguments, ClipDPOConfig, ModelConfig))
    with reported_errors():  # under several processes: the error once (rank 0), one line per other rank
        main(*parse_dataclasses(parser))
