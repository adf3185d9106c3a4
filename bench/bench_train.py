"""Training throughput (films per second) of the trainer against a plain PyTorch loop, same run, same data.

    python bench/bench_train.py [--quick] [--arch mobilenet_lung] [--films N] [--size S] [--batch B]

What is compared, and why it is fair:
- Both train the same architecture from the same initial weights with SGD (the seed 003 recipe), the same
  batch size, the same films (synthetic grey films, decoded once beforehand for both: decoding is a one-off
  cost in both designs) and the same augmentations (horizontal and vertical flips, rotation up to 10°).
- "plain": what one writes by hand: a ``Dataset`` whose ``__getitem__`` applies torchvision v2
  transforms, a ``DataLoader`` (no workers, as on a 2-core machine), fp32, contiguous (NCHW) tensors,
  ``loss.backward(); opt.step()``.
- "trainer": ``trainer.loop.fit`` itself (cxr-train), measured by its own step events: epoch films /
  seconds since the epoch started (so data loading, augmentation and the progress stream are inside the
  measurement; validation and checkpoint writing between epochs are not).
- The first epoch of each warms up (oneDNN primitive creation) and is not timed. The plain loop runs
  before and after the trainer so a change in machine load shows instead of silently favouring one side,
  and once more with channels-last memory, which shows where the difference comes from (the trainer uses
  channels-last; its data path should then cost only a few per cent).

Prints a markdown table; the ratio target is >= 1.0 (data loading and augmentation must not be the
bottleneck). It does not write docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_films(root: Path, n: int, size: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        c = i % 2
        d = root / ("A" if c == 0 else "B")
        d.mkdir(parents=True, exist_ok=True)
        base = 0.5 + 0.4 * np.sin((yy if c == 0 else xx) * 0.15 + rng.uniform(0, 6))
        img = np.clip((base + rng.normal(0, 0.1, base.shape)) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"f{i:04d}.png")
    return root


def plain_loop(arch: str, images: np.ndarray, labels: np.ndarray, batch: int, epochs: int, mean, std,
               init_state: dict, channels_last: bool = False) -> float:
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from cxrviewer.models import create_model

    tf = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(10)])
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    class Films(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            x = tf(torch.from_numpy(images[i]).unsqueeze(0))
            x = (x.float() / 255.0 - m) / s
            return x, int(labels[i])

    model = create_model(arch, int(labels.max()) + 1)
    model.load_state_dict(init_state)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(Films(), batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    rate = 0.0
    for ep in range(epochs):
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        if ep > 0:
            rate = seen / (time.perf_counter() - t0)
    return rate


def trainer_loop(arch: str, data: Path, size: int, batch: int, epochs: int, out: Path, fs) -> float:
    from trainer.loop import FitOptions, fit
    from trainer.progress import Progress
    from trainer.recipes import apply_overrides, get_recipe

    recipe = apply_overrides(get_recipe("seed003"), {"input_size": size, "batch_size": batch, "epochs": epochs,
                                                      "normalise": "imagenet", "early_stop_patience": 0,
                                                      "split": (0.8, 0.1, 0.1)})
    rates = {}

    class Capture(Progress):
        def step(self, epoch, epochs, step, steps, loss, acc, eta_s, films_per_s, force=False):
            if step == steps:
                rates[epoch] = films_per_s

    ids = np.zeros(len(fs.rels), dtype=np.int64)
    ids[-2:] = 1  # two validation films: the trainer needs a val split; they are not timed
    torch.manual_seed(0)
    fit(FitOptions(data=data, out=out, recipe=recipe, arch=arch, pretrained="none", filmset=fs, split_ids=ids,
                   deterministic=False), Capture(None, None))
    return float(np.mean([rates[e] for e in rates if e > 1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (a minute or two on 2 CPU cores)")
    ap.add_argument("--arch", default="mobilenet_lung")
    ap.add_argument("--films", type=int)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, help="including the untimed warm-up epoch")
    ap.add_argument("--threads", type=int, help="torch CPU threads for both loops (on a busy shared machine, 1 gives "
                                                 "the steadiest numbers: idle OpenMP threads spin against other jobs)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    films = args.films or (34 if args.quick else 130)
    epochs = args.epochs or (2 if args.quick else 3)

    from cxrviewer.device import describe_device
    from cxrviewer.models import create_model
    from cxrviewer.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from trainer import data as D

    with tempfile.TemporaryDirectory() as tmp:
        root = make_films(Path(tmp) / "data", films, 256)
        fs = D.decode(D.discover(root), args.size)
        train = fs.images[:-2], fs.labels[:-2]
        torch.manual_seed(0)
        init = {k: v.clone() for k, v in create_model(args.arch, 2).state_dict().items()}
        print(f"{args.arch}, {len(train[0])} training films at {args.size} px, batch {args.batch}, "
              f"{epochs} epochs (first untimed), {describe_device('cpu')}", file=sys.stderr)
        t = time.perf_counter()
        plain = plain_loop(args.arch, *train, args.batch, epochs, IMAGENET_MEAN, IMAGENET_STD, init)
        print(f"plain loop done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        t = time.perf_counter()
        ours = trainer_loop(args.arch, root, args.size, args.batch, epochs, Path(tmp) / "run", fs)
        print(f"trainer done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        # the plain loop again, after the trainer, so a change in machine load shows up instead of biasing one side
        plain2 = plain_loop(args.arch, *train, args.batch, epochs, IMAGENET_MEAN, IMAGENET_STD, init)
        plain_cl = plain_loop(args.arch, *train, args.batch, epochs, IMAGENET_MEAN, IMAGENET_STD, init, channels_last=True)
    plain_mean = (plain + plain2) / 2
    print()
    print("| model | films | size | batch | plain PyTorch loop (films/s, before / after) | cxr-train (films/s) | ratio |"
          " plain loop + channels-last (films/s, for reference) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.arch} | {len(train[0])} | {args.size} | {args.batch} | {plain:.2f} / {plain2:.2f} | {ours:.2f} | "
          f"{ours / plain_mean:.2f} | {plain_cl:.2f} |")
    print("\nratio = cxr-train / mean of the two plain runs; target >= 1.0", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
