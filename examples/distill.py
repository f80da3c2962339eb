"""Knowledge distillation of a CLIP model with `ClipDistillationTrainer`: a student matches a frozen teacher's softmax
over a candidate set (or its top candidate, `--target hard`), on labelled and unlabelled rows.

Flags are the fields of `DistillScriptArguments` (data, `--unlabelled_fraction`), `ClipDistillationConfig`
(training: `--teacher_model_name_or_path`, `--teacher_weights`, `--temperature`, `--target`, `--candidates`, ...)
and trl's `ModelConfig` (the student, LoRA); `--config file.yaml` sets any of them, and flags override the file.

Offline: the teacher is the contrastive model of `examples/contrastive.py`, the student a fresh random CLIP, and
half of the training rows lose their caption (the teacher alone trains on those):

```bash
python examples/contrastive.py --config examples/configs/contrastive.yaml    # -> clip_finetuned/ (the teacher)
python examples/distill.py --config examples/configs/distill.yaml            # -> clip_distilled/
torchrun --nproc_per_node 2 examples/distill.py --config examples/configs/distill.yaml --use_cpu true
```

The student, its processor and model card are saved to `--output_dir`; the test-split metrics are printed and
written to `<output_dir>/test_results.json`.
"""

from trl import ModelConfig, TrlParser

from clip_trl import ClipDistillationConfig
from clip_trl.cli import parse_dataclasses
from clip_trl.cli.errors import reported_errors
from clip_trl.scripts.common import evaluate_on_test, print_metrics
from clip_trl.scripts.data import load_data
from clip_trl.scripts.distill import DistillScriptArguments, run_distill


def main(
    script_args: DistillScriptArguments, training_args: ClipDistillationConfig, model_args: ModelConfig
) -> dict:
    data = load_data(script_args)
    trainer = run_distill(script_args, training_args, model_args, data=data)  # trains and saves
    metrics = evaluate_on_test(trainer, data, script_args)
    if trainer.is_world_process_zero():
        print_metrics(metrics, f"Test split, model saved to {training_args.output_dir}:")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return metrics


if __name__ == "__main__":
    parser = TrlParser((DistillScriptArguments, ClipDistillationConfig, ModelConfig))
    with reported_errors():  # under several processes: the error once (rank 0), one line per other rank
        main(*parse_dataclasses(parser))
