"""The training loop: one function, :func:`fit`, for the CLI, the dialog's subprocess, ``compare`` and torchrun.

Choices and why:

- Mixed precision where the hardware computes it natively (:func:`autocast_dtype`): fp16 autocast with a
  gradient scaler on CUDA; bf16 autocast on a CPU with AVX512-BF16/AMX (2-3x faster steps for these
  networks, and bf16's fp32 exponent range needs no scaler); fp32 elsewhere, since emulated bf16 is
  slower than fp32. ``amp=False`` (``--no-amp``) trains in fp32 everywhere. The precision is recorded in
  the card. Channels-last memory either way (faster convolutions on both oneDNN and cuDNN).
- Determinism by construction rather than by saving generator states: the film order of epoch ``e`` comes
  from a generator seeded with (seed, e), each film's augmentation from (seed, e, film index), and the
  global RNG (dropout) is reseeded with (seed, e, rank) at the start of every epoch. The state after a
  completed epoch is therefore model + optimizer + scheduler + scaler + counters, all of which are saved
  (:mod:`trainer.state`), and a resumed run continues bit-identically on the CPU. On CUDA, cuDNN is put in
  deterministic mode; atomics in some kernels may still differ in the last bits.
- The best checkpoint (by the recipe's ``select_metric``, macro F1 by default) and the last one are both
  kept; every write is atomic.
- After training: the best weights are reloaded, a temperature is fitted on the validation split and
  stored in the checkpoint, and the test split is evaluated exactly once, there.
- Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel
  (gloo on CPU, NCCL on CUDA); each rank trains on its shard of the same epoch order with
  batch_size / world_size films per step, so the global batch is the recipe's. Rank 0 validates, logs
  and writes; the others follow its early-stopping decision.
- Out-of-distribution statistics (issue 9) are computed through a hook: when ``cxrviewer.ood`` provides
  ``fit_ood_stats``, it is called with the pooled features of the training and validation films and its
  JSON result is stored as the card's ``ood``. About :data:`OOD_MAX_TRAIN` training films feed it (a
  seeded sample that keeps each class's share): a 32-component PCA and its 32x32 covariance are settled
  well before that, while an exact fp32 pass over every training film cost as much as an epoch on a CPU.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from trainer import data as D
from trainer.augment import Augmenter, sample_generator
from trainer.metrics import (calibration_temperature, card_metrics as card_metrics_of, classification_metrics,
                             evaluate_logits, metric_value, softmax, summary_row)
from trainer.progress import NullProgress, Progress
from trainer.recipes import Recipe
from trainer.state import STATE_FILE, StateError, load_state, save_state


class TrainingInterrupted(Exception):
    """The run stopped before its last epoch (Ctrl-C, SIGTERM, or the test hook); ``--resume`` continues it."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        super().__init__(f"training stopped after epoch {epoch}; continue with --resume --out {run_dir}")


@dataclass
class FitOptions:
    data: Any  # folder or CSV path
    out: Path
    recipe: Recipe
    arch: str = "mobilenet_lung"
    arch_args: dict = field(default_factory=dict)
    seed: int = 0
    device: Optional[str] = None
    patient_pattern: Optional[str] = None
    merge_classes: Optional[str] = None  # "NEW=old1+old2;..." (trainer.data.parse_merge)
    split_file: Optional[Path] = None
    resume: bool = False
    pretrained: Any = "auto"  # "auto" (the recipe's choice), "none", "hub", "imagenet-offline", or a path
    name: Optional[str] = None
    command: str = ""
    decode_workers: int = 0
    stop_after_epoch: Optional[int] = None  # test hook: behave as if interrupted after this epoch
    amp: bool = True
    deterministic: bool = True
    filmset: Optional[D.FilmSet] = None  # already decoded (``compare`` decodes once for every architecture)
    split_ids: Optional[np.ndarray] = None


@dataclass
class FitResult:
    run_dir: Path
    checkpoint: Path
    last_checkpoint: Path
    metrics: dict
    history: list
    temperature: float
    best_epoch: int
    stopped_early: bool
    epochs_run: int
    seconds: float


# --- distributed ------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cuda: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_pref: Optional[str]) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_pref in (None, "auto") or str(device_pref).startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local, use_cuda)


# --- batches ------------------------------------------------------------------------------------------

class Normaliser:
    """uint8 grey (B, 1, S, S) -> float (B, 3, S, S), the same arithmetic as ``cxrviewer.preprocess.normalise``."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.to(torch.float32) * (1.0 / 255.0)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def epoch_order(n: int, labels: np.ndarray, epoch: int, seed: int, balance: str, n_classes: int) -> np.ndarray:
    """The epoch's film order (indices into the training subset): a seeded permutation, or a seeded
    class-balanced draw with replacement when balance == "sampler"."""
    g = sample_generator(seed, epoch, -1)
    if balance == "sampler":
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        w = 1.0 / np.maximum(counts[labels], 1.0)
        return torch.multinomial(torch.from_numpy(w), n, replacement=True, generator=g).numpy()
    return torch.randperm(n, generator=g).numpy()


def shard(order: np.ndarray, dist: Dist) -> np.ndarray:
    if not dist.active:
        return order
    total = int(math.ceil(len(order) / dist.world)) * dist.world
    padded = np.concatenate([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[dist.rank :: dist.world]


def batch_slices(n: int, batch: int) -> list:
    """Consecutive batches; a last batch of one film is dropped (BatchNorm cannot train on a single film)."""
    out = [(i, min(i + batch, n)) for i in range(0, n, batch)]
    if len(out) > 1 and out[-1][1] - out[-1][0] == 1:
        out.pop()
    return out


class BatchStream:
    """Builds batches (augmentation, normalisation) in a background thread, one or two ahead of the model.

    Torch's image ops release the GIL, so augmentation overlaps the training step instead of adding to it.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, slices: list, augmenter,
                 normaliser: Normaliser, seed: int, epoch: int, prefetch: int = 2):
        self.images, self.labels, self.ids, self.slices = images, labels, ids, slices
        self.aug, self.norm, self.seed, self.epoch = augmenter, normaliser, seed, epoch
        self.q: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def make(self, lo: int, hi: int):
        idx = self.ids[lo:hi]
        u8 = torch.from_numpy(self.images[idx]).unsqueeze(1)  # (B, 1, S, S)
        if self.aug:
            u8 = torch.stack([self.aug(u8[j], sample_generator(self.seed, self.epoch, int(i))) for j, i in enumerate(idx)])
        return self.norm(u8), torch.from_numpy(self.labels[idx])

    def _run(self):
        try:
            for lo, hi in self.slices:
                if self._stop.is_set():
                    return
                self.q.put(("ok", self.make(lo, hi)))
            self.q.put(("end", None))
        except BaseException as e:  # surfaced in the consumer
            self.q.put(("err", e))

    def __iter__(self):
        while True:
            kind, item = self.q.get()
            if kind == "end":
                return
            if kind == "err":
                raise item
            yield item

    def close(self):
        self._stop.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.05)
            except queue.Empty:
                pass


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: np.ndarray, ids: np.ndarray, normaliser: Normaliser, device,
                        batch: int = 32) -> None:
    """Precise BN: replace the running statistics by their exact average over the training films.

    With few steps from random weights the running averages trail the weights so far that eval-mode
    predictions collapse to one class although training accuracy is high; averaging over one pass of the
    current weights removes that lag. Runs in train mode without gradients (dropout draws from the global
    RNG, which is reseeded every epoch, so resuming stays exact).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(ids) < 2:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was = model.training
    model.train()
    for lo, hi in batch_slices(len(ids), batch):
        model(normaliser(torch.from_numpy(images[ids[lo:hi]]).unsqueeze(1)).to(device))
    for m, mo in zip(bns, momenta):
        m.momentum = mo
    model.train(was)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, ids: np.ndarray, normaliser: Normaliser, device, batch: int = 64,
            features: bool = False) -> tuple:
    """Exact fp32 logits (and pooled features) for the films ``ids``, in order, in eval mode."""
    was = model.training
    model.eval()
    logits, feats = [], []
    for lo in range(0, len(ids), batch):
        idx = ids[lo : lo + batch]
        x = normaliser(torch.from_numpy(images[idx]).unsqueeze(1)).to(device)
        if features:
            out, f = model.forward_with_features(x)
            feats.append(f.float().cpu())
        else:
            out = model(x)
        logits.append(out.float().cpu())
    model.train(was)
    k = getattr(model, "num_classes", 0)
    lg = torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32)
    if features:
        return lg, (torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32))
    return lg, None


# --- building blocks ---------------------------------------------------------------------------------------

def resolve_pretrained(choice, recipe: Recipe, arch: str):
    """What to hand ``create_model(pretrained=...)``: the offline ImageNet MobileNetV2 for MobileNetV2
    models when the recipe wants pretraining (no network needed), the hub otherwise."""
    if choice in (None, "none", False, "false", "no"):
        return None
    if choice == "auto":
        if not recipe.pretrained:
            return None
        if arch in ("mobilenet_lung", "mobilenetv2"):
            from cxrviewer.models.pretrained import offline_mobilenetv2_path

            if offline_mobilenetv2_path() is not None:
                return "imagenet-offline"
        return True
    if choice == "hub":
        return True
    return choice  # "imagenet-offline" or a weights file


def make_optimizer(model: nn.Module, r: Recipe):
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)


def make_scheduler(opt, r: Recipe):
    if r.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, r.step_size), gamma=r.gamma)
    if r.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, r.epochs))
    return None


def class_weights(labels: np.ndarray, k: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (N / (K * n_c))."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = len(labels) / (k * np.maximum(counts, 1.0))
    return torch.tensor(w, dtype=torch.float32)


def autocast_dtype(amp: bool, device) -> Optional[torch.dtype]:
    """The autocast dtype for training on ``device``, or None for fp32 (see the module docstring)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        from cxrviewer.device import cpu_supports_bf16

        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


def _precision(opts, device) -> str:
    dtype = autocast_dtype(opts.amp, device)
    return {torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}.get(dtype, "fp32")


def _hardware(device) -> str:
    try:
        from cxrviewer.device import describe_device

        d = describe_device(device)
    except Exception:
        d = str(device)
    return f"{d}; torch {torch.__version__}; {platform.system()} {platform.machine()}"


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    g = sample_generator(seed, epoch, -2 - rank)
    return int(torch.randint(0, 2**62, (), generator=g))


@contextlib.contextmanager
def _determinism(on: bool, device):
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_cudnn_det = torch.backends.cudnn.deterministic
    if on:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_cudnn_det


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (the dialog's cancel, a scheduler's kill) stops like Ctrl-C: after the current step, state kept."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --- the run --------------------------------------------------------------------------------------------------

def prepare_data(opts: FitOptions, progress: Progress) -> tuple:
    """Decode (unless given) and split (unless given); returns (FilmSet, split ids, split source text)."""
    r = opts.recipe
    fs = opts.filmset
    if fs is None:
        src = D.discover(opts.data, opts.patient_pattern, opts.merge_classes)
        progress.emit("phase", phase="loading", done=0, total=len(src.samples))
        progress.say(f"loading {len(src.samples)} films from {src.origin} ({src.kind}, {len(src.classes)} classes)")
        for problem in src.problems:  # ignored files, CSV rows skipped, a film listed with two labels
            progress.warn(problem)
        fs = D.decode(src, r.input_size, r.resize, workers=opts.decode_workers or None,
                      on_progress=lambda d, n: progress.emit("phase", phase="loading", done=d, total=n))
        for rel, why in fs.skipped:
            progress.warn(f"skipped {rel}: {why}")
    elif fs.images.shape[1] != r.input_size:
        raise D.DataError(f"the decoded films are {fs.images.shape[1]} px but the recipe asks for {r.input_size}")
    if opts.split_ids is not None:
        return fs, np.asarray(opts.split_ids), "given"
    seen = len(fs.source.problems)
    resume_split = Path(opts.out) / "split.json"
    if opts.resume and resume_split.is_file():
        split_ids, origin = D.split_from_json(fs, json.loads(resume_split.read_text())), "resumed run"
    elif opts.split_file:
        split_ids, origin = D.split_from_json(fs, json.loads(Path(opts.split_file).read_text())), str(opts.split_file)
    else:
        split_ids, origin = D.split_films(fs, r.split, opts.seed), "computed"
    for problem in fs.source.problems[seen:]:  # a class missing from validation or test: now, not only in the
        progress.warn(problem)  # report at the end
    return fs, split_ids, origin


def fit(opts: FitOptions, progress: Optional[Progress] = None) -> FitResult:
    """Train, calibrate, test, report. Raises DataError for unusable data and TrainingInterrupted when stopped."""
    from cxrviewer.device import select_device
    from cxrviewer.models import create_model
    from cxrviewer.preprocess import PreprocessSpec

    dist = init_distributed(opts.device)
    if progress is None or not dist.main:  # only rank 0 reports
        progress = NullProgress()
    r = opts.recipe
    run_dir = Path(opts.out)
    t_start = time.monotonic()
    notices: list = []
    if dist.active and dist.cuda:
        device = torch.device("cuda", dist.local_rank)
    else:
        device = select_device(opts.device, notices)
    for n in notices:
        progress.warn(n)
    if opts.resume and not (run_dir / STATE_FILE).is_file():
        raise StateError(f"nothing to resume in {run_dir}: {STATE_FILE} not found")
    if not opts.resume and (run_dir / STATE_FILE).exists():
        raise StateError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    if opts.resume and dist.main:  # temporaries of writes cut short by a kill (cxrviewer.atomic): never read
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    fs, split_ids, split_origin = prepare_data(opts, progress)
    classes = list(fs.classes)
    k = len(classes)
    train_ids = np.flatnonzero(split_ids == 0)
    val_ids = np.flatnonzero(split_ids == 1)
    test_ids = np.flatnonzero(split_ids == 2)
    if r.normalise == "dataset":
        mean, std = D.dataset_mean_std(fs.images[train_ids])
        spec = PreprocessSpec(input_size=r.input_size, resize=r.resize, mean=mean, std=std)
    else:
        spec = PreprocessSpec(input_size=r.input_size, resize=r.resize)
    normaliser = Normaliser(spec.mean, spec.std)
    fingerprint = fs.fingerprint()
    split_json = D.split_to_json(fs, split_ids, opts.seed, r.split)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from trainer import report as R

        R.write_run_inputs(run_dir, opts, fs, split_json, spec)

    torch.manual_seed(opts.seed)
    model = create_model(opts.arch, k, pretrained=resolve_pretrained(opts.pretrained, r, opts.arch), **opts.arch_args)
    report = getattr(model, "pretrained_report", None)
    if report is not None and report.random_init:  # asked for pretrained weights, got none (offline, no file)
        message = f"pretrained weights unavailable ({report.note or report.source}); training from RANDOM weights"
        progress.warn(message)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, r)
    scheduler = make_scheduler(optimizer, r)
    amp_dtype = autocast_dtype(opts.amp, device)
    use_amp = amp_dtype == torch.float16  # the gradient scaler: fp16 only
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = class_weights(fs.labels[train_ids], k).to(device) if r.balance == "weighted_loss" else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=r.label_smoothing)

    info = {"epoch": 0, "best_value": None, "best_epoch": 0, "since_improved": 0, "early_value": None,
            "history": [], "stopped_early": False, "seed": opts.seed, "arch": opts.arch, "recipe": r.to_dict(),
            "data_fingerprint": fingerprint, "sampler": {"kind": r.balance, "seed": opts.seed},
            "rng": "reseeded from (seed, epoch, rank) at every epoch start"}
    if opts.resume:
        meta, mstate, ostate = load_state(run_dir)
        old = meta["info"]
        if old.get("data_fingerprint") != fingerprint:
            raise StateError("the data changed since this run started (different fingerprint); start a new run")
        if old.get("arch") != opts.arch:
            raise StateError(f"this run trains {old.get('arch')}, not {opts.arch}")
        old_recipe = dict(old.get("recipe", {}))
        new_recipe = r.to_dict()
        diff = sorted(kk for kk in new_recipe if kk != "epochs" and old_recipe.get(kk) != new_recipe[kk])
        if diff:
            raise StateError(f"the recipe differs from the interrupted run's ({', '.join(diff)}); resume with the same recipe")
        model.load_state_dict(mstate, strict=True)
        optimizer.load_state_dict(ostate)
        if scheduler is not None and meta.get("scheduler"):
            scheduler.load_state_dict(meta["scheduler"])
        if use_amp and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        info.update({kk: old[kk] for kk in ("epoch", "best_value", "best_epoch", "since_improved", "early_value",
                                              "history", "stopped_early") if kk in old})
        progress.say(f"resuming {run_dir.name} after epoch {info['epoch']}")

    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)

    augmenter = Augmenter(r)
    per_rank_batch = max(2, r.batch_size // dist.world) if dist.active else r.batch_size
    n_train = len(train_ids)
    steps = len(batch_slices(len(shard(np.arange(n_train), dist)), per_rank_batch))
    precision = _precision(opts, device)
    progress.emit("start", run_dir=str(run_dir), arch=opts.arch, recipe=r.name, epochs=r.epochs, classes=classes,
                  counts=split_json["counts"], device=str(device), world_size=dist.world, steps_per_epoch=steps,
                  start_epoch=info["epoch"] + 1, skipped=len(fs.skipped), precision=precision)
    progress.say(f"{opts.arch} on {device} ({precision}): {n_train} train / {len(val_ids)} val / {len(test_ids)} test films, "
                 f"{k} classes, recipe {r.name}, {r.epochs} epochs" + (f", {dist.world} processes" if dist.active else "")
                 + f"\nrun folder: {run_dir}")
    last_ckpt = run_dir / "last.safetensors"
    best_ckpt = run_dir / "best.safetensors"
    card_base = dict(name=opts.name or f"{opts.arch}-{run_dir.name}", spec=spec)
    epoch_times: list = []

    with _determinism(opts.deterministic, device), _sigterm_as_interrupt():
        try:
            epoch = info["epoch"]
            while epoch < r.epochs and not info["stopped_early"]:
                epoch += 1
                t_ep = time.monotonic()
                torch.manual_seed(_epoch_seed(opts.seed, epoch, dist.rank))
                progress.emit("phase", phase="training", done=epoch - 1, total=r.epochs)
                order = epoch_order(n_train, fs.labels[train_ids], epoch, opts.seed, r.balance, k)
                mine = train_ids[shard(order, dist)]
                slices = batch_slices(len(mine), per_rank_batch)
                stream = BatchStream(fs.images, fs.labels, mine, slices, augmenter, normaliser, opts.seed, epoch)
                net.train()
                sum_loss = torch.zeros((), dtype=torch.float64)
                correct = torch.zeros((), dtype=torch.float64)
                seen = torch.zeros((), dtype=torch.float64)
                try:
                    for step, (x, y) in enumerate(stream, start=1):
                        x = x.to(device, non_blocking=True)
                        y = y.to(device, non_blocking=True)
                        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                            enabled=amp_dtype is not None):
                            logits = net(x)
                        logits = logits.float()
                        loss = criterion(logits, y)  # "nll" = log-softmax + NLL: the same function
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                        b = y.shape[0]
                        sum_loss += float(loss.detach()) * b
                        correct += float((logits.detach().argmax(1) == y).sum())
                        seen += b
                        elapsed = time.monotonic() - t_ep
                        per_step = elapsed / step
                        done_epochs_time = (sum(epoch_times) / len(epoch_times)) if epoch_times else per_step * steps
                        eta = per_step * (steps - step) + done_epochs_time * (r.epochs - epoch)
                        progress.step(epoch, r.epochs, step, steps, float(sum_loss / seen), float(correct / seen),
                                      eta, float(seen) * dist.world / max(elapsed, 1e-9))
                finally:
                    stream.close()
                if dist.active:
                    import torch.distributed as tdist

                    agg = torch.stack([sum_loss, correct, seen]).to(device if device.type == "cuda" else "cpu")
                    tdist.all_reduce(agg)
                    sum_loss, correct, seen = agg.cpu()
                if scheduler is not None:
                    lr_used = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                else:
                    lr_used = optimizer.param_groups[0]["lr"]
                train_loss = float(sum_loss / max(float(seen), 1.0))
                train_acc = float(correct / max(float(seen), 1.0))

                if r.precise_bn:  # every rank: the DDP replicas must keep identical buffers
                    recompute_batchnorm(model, fs.images, train_ids, normaliser, device, max(2, r.batch_size))
                stop_flag = torch.zeros(1)
                if dist.main:
                    vlogits, _ = predict(model, fs.images, val_ids, normaliser, device)
                    vm = classification_metrics(softmax(vlogits), fs.labels[val_ids], classes, with_curves=False)
                    rec = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": vm["nll"],
                           "val_acc": vm["accuracy"], "val_macro_f1": vm["macro_f1"], "val_macro_auc": vm.get("macro_auc"),
                           "lr": lr_used, "seconds": round(time.monotonic() - t_ep, 3)}
                    value = metric_value(vm, r.select_metric)
                    improved = info["best_value"] is None or value > info["best_value"] + 1e-12
                    if improved:
                        info["best_value"], info["best_epoch"] = value, epoch
                    ev = metric_value(vm, r.early_stop_metric)
                    if info["early_value"] is None or ev > info["early_value"] + 1e-12:
                        info["early_value"], info["since_improved"] = ev, 0
                    else:
                        info["since_improved"] += 1
                    if r.early_stop_patience and info["since_improved"] >= r.early_stop_patience:
                        info["stopped_early"] = True
                    rec["best"] = improved
                    info["history"].append(rec)
                    info["epoch"] = epoch
                    _save_epoch(run_dir, model, optimizer, scheduler, scaler, info, classes, opts, fingerprint,
                                card_base, improved, last_ckpt, best_ckpt)
                    epoch_times.append(time.monotonic() - t_ep)
                    eta = (sum(epoch_times) / len(epoch_times)) * (r.epochs - epoch) if not info["stopped_early"] else 0.0
                    progress.epoch(epochs=r.epochs, eta_s=eta, **rec)
                    stop_flag[0] = 1.0 if info["stopped_early"] else 0.0
                else:
                    info["epoch"] = epoch
                if dist.active:
                    import torch.distributed as tdist

                    sf = stop_flag.to(device) if device.type == "cuda" else stop_flag
                    tdist.broadcast(sf, src=0)
                    info["stopped_early"] = bool(sf.item() > 0)
                if opts.stop_after_epoch is not None and epoch >= opts.stop_after_epoch and epoch < r.epochs \
                        and not info["stopped_early"]:
                    raise TrainingInterrupted(run_dir, epoch)
        except KeyboardInterrupt:
            progress.emit("cancelled", run_dir=str(run_dir), epoch=info["epoch"])
            progress.say(f"stopped; {run_dir} keeps the state after epoch {info['epoch']} (continue with --resume)")
            raise TrainingInterrupted(run_dir, info["epoch"]) from None
        except TrainingInterrupted as e:
            progress.emit("cancelled", run_dir=str(run_dir), epoch=e.epoch)
            raise

    if info["stopped_early"]:
        progress.say(f"early stop: {r.early_stop_metric} did not improve for {r.early_stop_patience} epochs")
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()
    if not dist.main:
        return FitResult(run_dir, best_ckpt, last_ckpt, {}, info["history"], 1.0, info["best_epoch"],
                         info["stopped_early"], info["epoch"], time.monotonic() - t_start)
    return _finish(opts, model, fs, split_ids, spec, normaliser, device, info, progress, run_dir, best_ckpt, last_ckpt,
                   card_base, fingerprint, split_json, t_start)


def _card_training(opts: FitOptions, info: dict, fingerprint: str, metrics: Optional[dict], device) -> dict:
    return {
        "data_fingerprint": fingerprint,
        "recipe": opts.recipe.to_dict(),
        "epochs": info["epoch"],
        "best_epoch": info["best_epoch"],
        "select_metric": opts.recipe.select_metric,
        "seed": opts.seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": opts.command,
        "metrics": metrics or {},
        "hardware": _hardware(device),
        "precision": _precision(opts, device),
    }


def _save_epoch(run_dir, model, optimizer, scheduler, scaler, info, classes, opts, fingerprint, card_base, improved,
                last_ckpt, best_ckpt):
    """Order matters for crash safety: checkpoints first, the resume state last, so a state file never points
    past what the checkpoints hold (a crash in between redoes one epoch, with the same result)."""
    from cxrviewer.checkpoint import card_defaults, save_checkpoint

    device = next(model.parameters()).device
    last_card = card_defaults(model, classes, card_base["spec"], name=card_base["name"] + "-last",
                              training=_card_training(opts, info, fingerprint, {"history": info["history"][-1:]}, device))
    save_checkpoint(last_ckpt, model, last_card)
    if improved:
        best_card = card_defaults(model, classes, card_base["spec"], name=card_base["name"],
                                  training=_card_training(opts, info, fingerprint, {"history": info["history"][-1:]}, device))
        save_checkpoint(best_ckpt, model, best_card)
    save_state(run_dir, model.state_dict(), optimizer, scheduler, scaler, info)


OOD_MAX_TRAIN = 2000


def ood_sample(train_ids: np.ndarray, labels: np.ndarray, seed: int, cap: int = OOD_MAX_TRAIN) -> np.ndarray:
    """About ``cap`` of ``train_ids`` (sorted), each class keeping its share (at least one film), drawn
    from a generator seeded by ``seed`` so a rerun stores the same statistics."""
    train_ids = np.asarray(train_ids)
    if len(train_ids) <= cap:
        return train_ids
    g = sample_generator(seed, -1, -1)
    keep = []
    for c in np.unique(labels):
        members = train_ids[labels == c]
        n = max(1, int(round(cap * len(members) / len(train_ids))))
        pick = torch.randperm(len(members), generator=g)[:n].numpy()
        keep.append(members[pick])
    return np.sort(np.concatenate(keep))


def _ood_stats(model, fs, train_ids, val_ids, normaliser, device, progress, val_features, seed) -> tuple:
    """Issue 9's hook: ``cxrviewer.ood.fit_ood_stats(train_features=, train_labels=, val_features=,
    val_labels=, classes=) -> dict`` (JSON), given the pooled features of the un-augmented films.
    ``val_features``: computed with the calibration logits, so the validation films are run once.
    -> (the statistics or None, why there are none, for the report)."""
    try:
        from cxrviewer.ood import fit_ood_stats
    except ImportError:
        return None, "no OOD module available at training time"
    ids = ood_sample(train_ids, fs.labels[train_ids], seed)
    _, tf = predict(model, fs.images, ids, normaliser, device, features=True)
    try:
        return fit_ood_stats(train_features=tf, train_labels=fs.labels[ids], val_features=val_features,
                             val_labels=fs.labels[val_ids], classes=list(fs.classes)), ""
    except Exception as e:  # the guard is an extra: its failure must not lose a finished training run
        progress.warn(f"out-of-distribution statistics not stored: {e}")
        return None, str(e)


def _finish(opts, model, fs, split_ids, spec, normaliser, device, info, progress, run_dir, best_ckpt, last_ckpt,
            card_base, fingerprint, split_json, t_start) -> FitResult:
    from safetensors.torch import load_file

    from cxrviewer.checkpoint import card_defaults, save_checkpoint
    from trainer import report as R

    classes = list(fs.classes)
    val_ids = np.flatnonzero(split_ids == 1)
    test_ids = np.flatnonzero(split_ids == 2)
    train_ids = np.flatnonzero(split_ids == 0)
    state = load_file(str(best_ckpt), device="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    progress.emit("phase", phase="calibrating", done=0, total=1)
    vlogits, vfeats = predict(model, fs.images, val_ids, normaliser, device, features=True)  # features: OOD below
    temperature, not_fitted = calibration_temperature(vlogits, fs.labels[val_ids])
    if not_fitted:  # for the dialog's warning list; the console's summary line says it too
        progress.emit("warning", message=f"no temperature fitted: {not_fitted}; the model's percentages are its "
                                         "own, uncalibrated")
    val_metrics = evaluate_logits(vlogits, fs.labels[val_ids], classes, temperature)
    test_metrics = None
    if len(test_ids):
        progress.emit("phase", phase="testing", done=0, total=1)
        tlogits, _ = predict(model, fs.images, test_ids, normaliser, device)
        test_metrics = evaluate_logits(tlogits, fs.labels[test_ids], classes, temperature)
    ood, ood_not_stored = _ood_stats(model, fs, train_ids, val_ids, normaliser, device, progress, vfeats, opts.seed)
    metrics = {
        "classes": classes,
        "best_epoch": info["best_epoch"],
        "select_metric": opts.recipe.select_metric,
        "temperature": temperature,
        "temperature_not_fitted": not_fitted,
        "ood_not_stored": ood_not_stored,
        "val": val_metrics,
        "test": test_metrics,
        "history": info["history"],
        "stopped_early": info["stopped_early"],
        "skipped": [{"path": p, "reason": why} for p, why in fs.skipped],
    }
    card_metrics = {"val": card_metrics_of(val_metrics), "test": card_metrics_of(test_metrics),
                    "temperature": temperature, **({"temperature_not_fitted": not_fitted} if not_fitted else {})}
    card = card_defaults(model, classes, spec, name=card_base["name"], temperature=temperature,
                         training=_card_training(opts, info, fingerprint, card_metrics, device),
                         card={"description": f"{opts.arch} trained with the {opts.recipe.name} recipe on "
                                              f"{Path(str(opts.data)).name} ({len(fs.rels)} films)",
                               "data": f"{len(fs.rels)} films, fingerprint {fingerprint[:16]}",
                               "limits": "Trained locally; check the run report before relying on it."},
                         ood=ood)
    save_checkpoint(best_ckpt, model, card)
    progress.emit("phase", phase="reporting", done=0, total=1)
    seconds = time.monotonic() - t_start
    report_path = R.write_run_report(run_dir, opts, fs, split_json, metrics, card, seconds)
    result = FitResult(run_dir, best_ckpt, last_ckpt, metrics, info["history"], temperature, info["best_epoch"],
                       info["stopped_early"], info["epoch"], seconds)
    summary = (test_metrics or val_metrics)
    progress.emit("done", run_dir=str(run_dir), checkpoint=str(best_ckpt), report=str(report_path),
                  metrics={"val": summary_row(val_metrics), "test": summary_row(test_metrics) if test_metrics else None},
                  stopped_early=info["stopped_early"], temperature=temperature)
    which = "test" if test_metrics else "validation"
    progress.say(
        f"\nbest epoch {info['best_epoch']} by {opts.recipe.select_metric}; {which}: accuracy {summary['accuracy']:.3f}, "
        f"macro F1 {summary['macro_f1']:.3f}"
        + (f", macro AUC {summary['macro_auc']:.3f}" if summary.get("macro_auc") is not None else "")
        + f"; ECE {summary['ece_before_temperature']:.3f} -> {summary.get('ece_after_temperature') or 0:.3f} (T={temperature:.2f}"
        + (f": not fitted, {not_fitted}" if not_fitted else "") + ")"
        f"\nmodel: {best_ckpt}\nreport: {report_path}"
    )
    return result


# --- evaluate a checkpoint ----------------------------------------------------------------------------------

def evaluate_checkpoint(checkpoint, data, out, device=None, progress: Optional[Progress] = None,
                        patient_pattern: Optional[str] = None, command: str = "",
                        merge_classes: Optional[str] = None) -> dict:
    """Evaluate any checkpoint on a labelled folder/CSV: every readable film, the card's preprocessing and
    temperature; the same metrics, plots and report as a training run."""
    from cxrviewer.checkpoint import card_spec, load_checkpoint
    from cxrviewer.device import select_device
    from trainer import report as R

    progress = progress or NullProgress()
    notices: list = []
    dev = select_device(device, notices)
    model, card = load_checkpoint(checkpoint, device=dev)
    spec = card_spec(card)
    classes = list(card["classes"])
    src = D.discover(data, patient_pattern, merge_classes)
    unknown = [c for c in src.classes if c not in classes]
    if unknown:
        raise D.DataError(f"class folder(s) {', '.join(map(repr, unknown))} are not classes of this model "
                          f"({', '.join(classes)})")
    remap = [classes.index(c) for c in src.classes]
    for s in src.samples:
        s.label = remap[s.label]
    src.classes = classes
    progress.emit("phase", phase="loading", done=0, total=len(src.samples))
    fs = _decode_lenient(src, spec, progress)
    normaliser = Normaliser(spec.mean, spec.std)
    ids = np.arange(len(fs.rels))
    progress.emit("phase", phase="testing", done=0, total=1)
    logits, _ = predict(model, fs.images, ids, normaliser, dev)
    metrics = evaluate_logits(logits, fs.labels, classes, float(card.get("temperature", 1.0)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = R.write_eval_report(out, checkpoint, card, fs, metrics, command)
    progress.emit("done", run_dir=str(out), report=str(report_path), metrics={"test": summary_row(metrics)})
    progress.say(f"{Path(checkpoint).name} on {len(ids)} films: accuracy {metrics['accuracy']:.3f}, "
                 f"macro F1 {metrics['macro_f1']:.3f}\nreport: {report_path}")
    return metrics


def _decode_lenient(src: D.DataSource, spec, progress) -> D.FilmSet:
    """Decode for evaluation: a class of the model absent from the folder is fine (unlike training)."""
    return D.decode(src, spec.input_size, spec.resize, require_all_classes=False,
                    on_progress=lambda d, n: progress.emit("phase", phase="loading", done=d, total=n))
