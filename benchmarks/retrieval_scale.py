"""Retrieval metrics at scale: time and peak memory of `retrieval_scores` against the bare matrix product.

Pools of N captions (default 10k, 50k, 100k) over N/5 images, 5 captions per image (COCO's shape), random
L2-normalised embeddings of width 512 (ViT-B/32's), each caption near its image so recalls are not all zero.
Contenders, each in its own process (so its peak RSS is its own), one thread:

- `gemm`: the bare matrix product `images @ texts.T`, tile by tile (the same 2^24-score tiles), nothing else:
  the floor any exact method pays;
- `torch`: `retrieval_scores(..., backend="torch")` with the positives as an index list (blocked top-k);
- `faiss`: `retrieval_scores(..., backend="faiss")` (a flat inner-product index), when faiss is installed;
- `dense`: the previous implementation (dense `[N/5, N]` positives mask, two passes), from git history as
  `benchmarks/_retrieval_dense.py`, on the sizes where its mask fits (`--dense_max`).

Time is CPU seconds of the process (`time.process_time`: a busy shared machine disturbs it far less than
wall-clock time), peak memory is the process's peak RSS above what it held once the embeddings were made.
Contenders run in a rotating order per size. The last column counts, per contender, the queries whose hit differs
from the torch backend's (the largest over the metrics): all compute the same ranks from the scores, but a score
computed in another tile shape (or by FAISS) can differ in the last bit and so order a near-tie the other way.

    python benchmarks/retrieval_scale.py                      # 10k, 50k, 100k captions
    python benchmarks/retrieval_scale.py --sizes 2000,10000 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

CAPTIONS_PER_IMAGE = 5


def make_pool(captions: int, dim: int, seed: int = 0):
    """Images, texts and pairs, built in chunks (few temporaries: the peak RSS measured after is the method's)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(captions // CAPTIONS_PER_IMAGE, dim, generator=generator)
    images /= images.norm(dim=1, keepdim=True)
    owner = torch.arange(captions) // CAPTIONS_PER_IMAGE
    texts = torch.empty(captions, dim)
    for start in range(0, captions, 8192):
        # Noisy copies of their image: cosine about 0.16 with it, below the largest chance cosine in a 100k pool.
        chunk = images[owner[start : start + 8192]]
        chunk += (40 / dim) ** 0.5 * torch.randn(chunk.shape, generator=generator)
        texts[start : start + 8192] = chunk / chunk.norm(dim=1, keepdim=True)
    pairs = torch.stack([owner, torch.arange(captions)], dim=1)
    return images, texts, pairs


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(contender: str, captions: int, dim: int) -> dict:
    import torch

    torch.set_num_threads(1)
    images, texts, pairs = make_pool(captions, dim)
    baseline = current_rss_mib()
    start = time.process_time()
    metrics = None
    if contender == "gemm":
        from clip_trl.evaluation.ranking import TILE_ELEMENTS

        side = math.isqrt(TILE_ELEMENTS)  # the tiles of clip_trl.evaluation.ranking
        rows = min(images.shape[0], side)
        columns = min(texts.shape[0], max(side, TILE_ELEMENTS // rows))
        for i in range(0, images.shape[0], rows):
            for j in range(0, texts.shape[0], columns):
                images[i : i + rows] @ texts[j : j + columns].T
    elif contender in ("torch", "faiss"):
        from clip_trl.evaluation import retrieval_scores

        metrics = retrieval_scores(images, texts, pairs, backend=contender)
    elif contender == "dense":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _retrieval_dense import dense_retrieval_scores

        positives = torch.zeros(images.shape[0], texts.shape[0], dtype=torch.bool)
        positives[pairs[:, 0], pairs[:, 1]] = True
        metrics = dense_retrieval_scores(images, texts, positives)
    seconds = time.process_time() - start
    return {"seconds": seconds, "peak_mib": peak_rss_mib() - baseline, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,50000,100000", help="caption counts (images: a fifth)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--dense_max", type=int, default=100000, help="largest size the dense version runs at"
    )
    parser.add_argument("--quick", action="store_true", help="width 128")
    parser.add_argument("--one", nargs=2, metavar=("CONTENDER", "CAPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.dim = 128
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.dim)))
        return
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, one thread, width {args.dim}, {CAPTIONS_PER_IMAGE} captions per image\n"
    )
    print(
        "| captions x images | bare GEMM (s) | torch (s) | torch / GEMM | torch peak (MiB) | faiss (s) "
        "| faiss / GEMM | faiss peak (MiB) | dense (s) | dense / GEMM | dense peak (MiB) | queries whose hit differs from torch's |"
    )
    print("| --- |" + " --- |" * 11)
    contenders = ["gemm", "torch"] + (["faiss"] if has_faiss else []) + ["dense"]
    for turn, captions in enumerate(int(size) for size in args.sizes.split(",")):
        order = contenders[turn % len(contenders) :] + contenders[: turn % len(contenders)]
        results = {}
        for contender in order:
            if contender == "dense" and captions > args.dense_max:
                continue
            command = [sys.executable, __file__, "--one", contender, str(captions), "--dim", str(args.dim)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[contender] = json.loads(output.strip().splitlines()[-1])
        gemm = results["gemm"]["seconds"]
        cells = [f"{captions} x {captions // CAPTIONS_PER_IMAGE}", f"{gemm:.1f}"]
        for name in ("torch", "faiss", "dense"):
            if name in results:
                r = results[name]
                cells += [f"{r['seconds']:.1f}", f"{r['seconds'] / gemm:.2f}x", f"{r['peak_mib']:.0f}"]
            else:
                cells += ["–", "–", "–"]
        # Queries on which each contender's recall differs from the torch backend's (largest over the metrics):
        # float scores computed in other tile shapes (or by FAISS) can order near-ties differently in the last bit.
        reference = results["torch"]["metrics"]
        counts = {"image": captions // CAPTIONS_PER_IMAGE, "text": captions}
        differences = []
        for name, r in results.items():
            if name in ("gemm", "torch"):
                continue
            worst = max(
                round(abs(r["metrics"][key] - value) * counts[key.split("_")[0]])
                for key, value in reference.items()
            )
            differences.append(f"{name} {worst}")
        cells.append(
            (", ".join(differences) or "–") + f" (R@1 i2t {reference['image_to_text_recall@1']:.3f}, "
            f"t2i {reference['text_to_image_recall@1']:.3f})"
        )
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
