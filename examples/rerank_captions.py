"""Captioner reranking: a captioning model proposes captions, a (fine-tuned) CLIP picks the best one.

With a network — BLIP samples 5 captions per image, the CLIP from `clip-trl pipeline` ranks them:

```bash
python examples/rerank_captions.py --clip_model clip_trl_pipeline/clip_rl_finetuned \
    --captioner Salesforce/blip-image-captioning-base --dataset_name <hub id> --num_images 8
```

Offline — no captioner can be downloaded, so the candidates come from the data: a column holding a list of
captions per image (`--candidate_column`), or, by default, each test image's own caption plus
`--num_candidates - 1` captions of other test images. Then the script also reports how often the CLIP ranks
the image's own caption first (`top1_accuracy`), for the base and the fine-tuned model alike:

```bash
clip-trl pipeline --output_dir clip_trl_pipeline
python examples/rerank_captions.py --clip_model clip_trl_pipeline/clip_rl_finetuned
python examples/rerank_captions.py --clip_model clip_trl_pipeline/base_model
```
"""

from dataclasses import dataclass, field

import numpy as np
from trl import TrlParser

from clip_trl.cli import parse_dataclasses
from clip_trl.inference.rerank import generate_candidates, rerank
from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.common import dump_json
from clip_trl.scripts.data import load_data


@dataclass
class RerankArguments:
    clip_model: str = field(metadata={"help": "CLIP model (Hub id or folder, LoRA adapters too) that ranks."})
    captioner: str | None = field(
        default=None,
        metadata={
            "help": "Image-to-text model proposing captions, e.g. Salesforce/blip-image-captioning-base. "
            "Default: candidates from the data (offline)."
        },
    )
    candidate_column: str | None = field(
        default=None,
        metadata={"help": "Column with a list of candidate captions per image (without --captioner)."},
    )
    num_candidates: int = field(default=5, metadata={"help": "Candidates per image."})
    num_images: int = field(
        default=8, metadata={"help": "Test images to caption and show (0: the whole split)."}
    )
    prompt: str | None = field(
        default=None, metadata={"help": "Caption prefix for the captioner, e.g. 'a picture of'."}
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column holding the true captions."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled captions and distractors."})
    output_file: str | None = field(
        default=None, metadata={"help": "Also write the rankings to this JSON file."}
    )


def data_candidates(rows, all_captions: list[str], args: RerankArguments) -> list[list[str]]:
    """Offline candidates: a column's lists, or the true caption among randomly drawn other captions."""
    if args.candidate_column:
        return [list(c) for c in rows[args.candidate_column]]
    rng = np.random.default_rng(args.seed)
    lists = []
    for truth in rows[args.caption_column]:
        others = [c for c in all_captions if c != truth]
        picked = rng.choice(len(others), size=min(args.num_candidates - 1, len(others)), replace=False)
        options = [truth] + [others[i] for i in picked]
        rng.shuffle(options)  # the true caption's position must tell the ranker nothing
        lists.append(options)
    return lists


def main(script_args: ScriptArguments, args: RerankArguments) -> list[dict]:
    test = load_data(script_args)[script_args.dataset_test_split]
    rows = test if args.num_images == 0 else test.select(range(min(args.num_images, len(test))))
    images = rows[args.image_column]
    if args.captioner:
        from transformers import set_seed

        set_seed(args.seed)
        candidates = generate_candidates(
            images, args.captioner, num_candidates=args.num_candidates, prompt=args.prompt
        )
    else:
        candidates = data_candidates(rows, test[args.caption_column], args)
    ranked = rerank(images, candidates, args.clip_model)
    report = []
    truths = rows[args.caption_column] if args.caption_column in rows.column_names else [None] * len(rows)
    for index, (options, truth) in enumerate(zip(ranked, truths)):
        print(f"\nimage {index}" + (f" (true caption: {truth!r})" if truth else ""))
        for caption, score in options:
            print(f"  {score:7.2f}  {'✓' if caption == truth else ' '} {caption}")
        report.append({"ground_truth": truth, "ranked": [{"caption": c, "score": s} for c, s in options]})
    if not args.captioner and all(truths):
        hits = sum(options[0][0] == truth for options, truth in zip(ranked, truths))
        print(
            f"\ntop1_accuracy: {hits / len(ranked):.3f} ({hits}/{len(ranked)}; chance ≈ "
            f"{1 / args.num_candidates:.3f})"
        )
    if args.output_file:
        dump_json(report, args.output_file)
    return report


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, RerankArguments))
    main(*parse_dataclasses(parser))
