"""Re-run the cheap claims of README.md and docs/ on the code as it is, and print claimed vs measured.

Each claim is an exact quote from a page (so a reworded page shows up as "quote not found" instead of silently
going unchecked) and a measurement. The default set takes well under a minute on 2 CPU cores; the expensive
ones are opt-in:

    python benchmarks/check_claims.py                 # data, tokenizer, model sizes, install, determinism
    python benchmarks/check_claims.py --launch        # + the documented 2-process CPU command (~30 s)
    python benchmarks/check_claims.py --pipeline      # + wall time of the whole `clip-trl pipeline`
    python benchmarks/check_claims.py --throughput    # + ours / plain Trainer samples/s (a short interleaved run)

Exit status 1 when a quote is missing or a measurement disagrees with its claim.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Claim:
    page: str
    quote: str  # exact text on the page
    claimed: str
    measure: Callable[[], tuple[str, bool]]  # (measured, agrees)


# ------------------------------------------------------------------------------------------ measurements


def emoji_split() -> tuple[str, bool]:
    from clip_trl.offline import load_emoji_dataset

    data = load_emoji_dataset()
    sizes = [len(data[split]) for split in ("train", "validation", "test")]
    return f"{sum(sizes):,} images, {sizes[0]:,} / {sizes[1]} / {sizes[2]}", sizes == [1559, 195, 195]


def tokenizer_ids() -> tuple[str, bool]:
    from clip_trl.offline import CLIP_BPE_FILE, clip_tokenizer

    tokenizer = clip_tokenizer()
    ids = tokenizer("a photo of a cat")["input_ids"]
    where = CLIP_BPE_FILE
    bundled = where.is_file() and "clip_trl" in where.parts
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    return (
        f"{len(tokenizer):,} tokens, 'a photo of a cat' -> {ids}, file {'inside clip_trl' if bundled else where}",
        len(tokenizer) == 49408 and ids == expected and bundled,
    )


def small_model() -> tuple[str, bool]:
    from clip_trl.offline import OFFLINE_MODEL_SIZES
    from clip_trl.offline.recipes import DEFAULT_OFFLINE_IMAGE_SIZE

    preset = OFFLINE_MODEL_SIZES["small"]
    vision = preset["vision_config"]
    text = (
        f"{vision['num_hidden_layers']} layers x {vision['hidden_size']}, {vision['image_size']} px by default, "
        f"pipeline at {DEFAULT_OFFLINE_IMAGE_SIZE} px"
    )
    return text, (
        vision["num_hidden_layers"],
        vision["hidden_size"],
        vision["image_size"],
        DEFAULT_OFFLINE_IMAGE_SIZE,
    ) == (4, 256, 64, 32)


def install_without_open_clip() -> tuple[str, bool]:
    script = (ROOT / "scripts" / "install.sh").read_text()
    installs_open_clip = "open-clip-torch" in re.sub(r"#.*", "", script)
    return (
        "install.sh installs open-clip-torch"
        if installs_open_clip
        else "install.sh does not install open-clip-torch"
    ), not installs_open_clip


def deterministic_on_this_machine() -> tuple[str, bool]:
    """Two identical short contrastive runs in this process give bitwise equal weights."""
    import torch

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    from clip_trl.offline import build_clip, load_emoji_dataset

    data = load_emoji_dataset(max_examples=64)["train"]

    def run() -> dict:
        model, processor = build_clip("tiny", seed=0)
        args = ClipContrastiveConfig(
            output_dir=tempfile.mkdtemp(),
            max_steps=3,
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="no",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=1,
        )
        ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor).train()
        return {k: v.clone() for k, v in model.state_dict().items()}

    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs; keep the table readable
        first, second = run(), run()
    equal = all(torch.equal(first[k], second[k]) for k in first)
    return (
        "bitwise equal weights after two identical runs here (across CPUs: not checked by this script)"
        if equal
        else "weights differ between two identical runs"
    ), equal


def documented_launch() -> tuple[str, bool]:
    page = (ROOT / "docs" / "distributed.md").read_text()
    block = re.search(r"```bash\n(.*?)```", page.split("## Several processes on CPU", 1)[1], re.S).group(1)
    command = shlex.split(block.splitlines()[0])
    out = tempfile.mkdtemp()
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *command[1:],
        "--output_dir",
        out,
        "--offline_model_size",
        "tiny",
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--eval_strategy",
        "no",
        "--log_level",
        "info",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    found = re.search(
        r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)",
        result.stdout + result.stderr,
    )
    if result.returncode != 0 or not found:
        return f"failed (exit {result.returncode})", False
    world = int(found[1]) // 4
    return f"world size {world}", world == 2


def pipeline_time() -> tuple[str, bool]:
    start = time.perf_counter()
    out = tempfile.mkdtemp()
    result = subprocess.run(
        [sys.executable, "-m", "clip_trl.cli", "pipeline", "--output_dir", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds = time.perf_counter() - start
    return (
        f"{seconds:.0f} s (exit {result.returncode}; load average {os.getloadavg()[0]:.1f})",
        result.returncode == 0,
    )


def throughput() -> tuple[str, bool]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        path = handle.name
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "contrastive_throughput.py"),
            "--threads",
            "1",
            "--contenders",
            "ours,ours_processor,plain",
            "--repeats",
            "3",
            "--json",
            path,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    reps = {
        name: [r["steps"] / r["seconds"] for r in c["reps"][1:]]
        for name, c in json.loads(Path(path).read_text())["contenders"].items()
    }
    own = sorted(a / b for a, b in zip(reps["ours"], reps["plain"]))
    same = sorted(a / b for a, b in zip(reps["ours_processor"], reps["plain"]))
    text = (
        f"ours/plain {own[len(own) // 2]:.2f} ({own[0]:.2f}-{own[-1]:.2f}) each with its default images; "
        f"{same[len(same) // 2]:.2f} ({same[0]:.2f}-{same[-1]:.2f}) with the same images"
    )
    return text, True  # a measurement to read, not a pass/fail: the machine's load decides the spread


# ------------------------------------------------------------------------------------------------ claims

CHEAP = [
    Claim(
        "docs/quickstart.md",
        "1,949 images, split 1,559 / 195 / 195",
        "1,949 images, 1,559 / 195 / 195",
        emoji_split,
    ),
    Claim(
        "docs/quickstart.md",
        "OpenAI's CLIP BPE tokenizer (49,408 tokens, from OpenAI's\n  merges file shipped inside clip_trl",
        "49,408 tokens, OpenAI's ids, file inside clip_trl",
        tokenizer_ids,
    ),
    Claim(
        "docs/quickstart.md",
        "64 px input by default; the pipeline and the example configs\n  run it at 32 px",
        "4 layers x 256, 64 px by default, pipeline at 32 px",
        small_model,
    ),
    Claim(
        "README.md",
        "OpenAI's CLIP BPE vocabulary ships inside clip_trl (MIT)",
        "no open-clip-torch install",
        install_without_open_clip,
    ),
    Claim(
        "README.md",
        "deterministic on one machine",
        "deterministic on one machine",
        deterministic_on_this_machine,
    ),
]
OPTIONAL = {
    "launch": Claim(
        "docs/distributed.md", "start N processes with `torchrun`", "2 processes", documented_launch
    ),
    "pipeline": Claim("docs/pipeline.md", "51 s in all", "51 s on an idle 2-vCPU machine", pipeline_time),
    "throughput": Claim(
        "docs/benchmarks/throughput.md",
        "Contrastive throughput, as shipped",
        "see the throughput page",
        throughput,
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in OPTIONAL:
        parser.add_argument(f"--{name}", action="store_true")
    args = parser.parse_args()
    claims = CHEAP + [claim for name, claim in OPTIONAL.items() if getattr(args, name)]
    rows, failed = [], 0
    for claim in claims:
        text = (ROOT / claim.page).read_text(encoding="utf-8")
        if claim.quote not in text:
            rows.append(
                (claim.page, claim.claimed, "quote not found: the page changed; update this script", "NO")
            )
            failed += 1
            continue
        measured, agrees = claim.measure()
        failed += not agrees
        rows.append((claim.page, claim.claimed, measured, "yes" if agrees else "NO"))
    print("| page | claimed | measured | agrees |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
