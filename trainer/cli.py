"""cxr-train: train CXR Viewer's models on local folders, evaluate, compare and publish them.

    cxr-train fit DATA --arch mobilenet_lung --recipe seed003 --out RUNDIR [--epochs N] [--set key=value ...]
    cxr-train fit DATA ... --resume --out RUNDIR          continue an interrupted run where it stopped
    torchrun --nproc_per_node 2 -m trainer fit DATA ...   the same run with DistributedDataParallel
    cxr-train evaluate CHECKPOINT DATA --out DIR
    cxr-train compare DATA --archs mobilenet_lung,mobilenetv2,resnet18 --recipe seed003 --out DIR
    cxr-train publish RUNDIR --card CARD.json --out MODEL.safetensors
    cxr-train recipes [NAME]

DATA is a folder with one subfolder per class, a CSV of path,label[,patient], or a folder holding
train/ val/ [test/]. Exit status: 0 done, 2 unusable input (message on stderr), 130 stopped (resumable).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import shlex
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130
_DISK_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EFBIG)


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient-pattern", metavar="REGEX",
                   help="regular expression on file names giving the patient (named group 'patient', else group 1, "
                        "else the whole match); a CSV patient column wins, DICOM PatientID is used when neither applies")
    p.add_argument("--merge-classes", metavar="NEW=OLD+OLD", default=None,
                   help="relabel without touching the data, e.g. 'Pneumonia=Pneumonia-Bacterial+Pneumonia-Viral'; "
                        "several merges separated by ';'")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--progress-jsonl", nargs="?", const="-", default=None, metavar="PATH",
                   help="write machine-readable progress events as JSON lines to PATH, or to stdout when no PATH "
                        "is given (human output then goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no human-readable progress")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; the viewer's "
                                                 "dialog leaves one core free)")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="seed003", help="named preset (see `cxr-train recipes`); default seed003")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size (global, across processes)")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--input-size", type=int, help="override the model input size in pixels (default 224)")
    p.add_argument("--augment", help="override the augmentation list, comma-separated: "
                                     "hflip,vflip,rotate,affine,crop,erase (empty string for none)")
    p.add_argument("--balance", choices=("none", "weighted_loss", "sampler"),
                   help="class imbalance: inverse-frequency loss weights or a class-balanced sampler")
    p.add_argument("--select-metric", choices=("macro_f1", "accuracy", "macro_auc", "loss"),
                   help="validation metric that chooses the best checkpoint (default macro_f1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field, e.g. --set optimizer=sgd --set step_size=5 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, order, augmentation and initialisation")
    p.add_argument("--split-file", type=Path, help="reuse a split.json from an earlier run (exact reproduction)")
    p.add_argument("--pretrained", default="auto",
                   help="auto (the recipe's choice: the offline ImageNet weights for MobileNetV2 models, the hub "
                        "otherwise, random with a warning when offline), none, hub, imagenet-offline, or a weights file")
    p.add_argument("--workers", type=int, default=0, help="threads that decode films at start (default: up to 4)")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 (default: fp16 autocast on CUDA, bf16 on a CPU with native bf16)")
    p.add_argument("--no-deterministic", action="store_true", help="allow nondeterministic (faster) GPU kernels")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cxr-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="train a model on a data folder", formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("data", help="folder (one subfolder per class, or train/ val/ test/) or CSV of path,label[,patient]")
    f.add_argument("--arch", default="mobilenet_lung", help="architecture from the model zoo (default mobilenet_lung)")
    f.add_argument("--out", type=Path, help="run folder (default: a new folder in the user's runs folder)")
    f.add_argument("--name", help="model name stored in the checkpoint (default ARCH-RUNFOLDER)")
    f.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its last epoch")
    f.add_argument("--install", action="store_true", help="install the best model into the viewer's models folder")
    f.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # test hook: simulate an interruption
    _recipe_args(f)
    _common_data(f)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a labelled folder")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("data")
    e.add_argument("--out", type=Path, help="report folder (default: CHECKPOINT_eval_DATE next to the checkpoint)")
    _common_data(e)

    c = sub.add_parser("compare", help="train several architectures on one split and write one table")
    c.add_argument("data")
    c.add_argument("--archs", required=True, help="comma-separated architectures")
    c.add_argument("--out", type=Path, required=True)
    _recipe_args(c)
    _common_data(c)

    from trainer.publish import add_parser as add_publish

    add_publish(sub)

    r = sub.add_parser("recipes", help="list the recipes, or show one")
    r.add_argument("name", nargs="?")
    r.add_argument("--json", action="store_true")
    return ap


def _recipe_from_args(args):
    from trainer.recipes import apply_overrides, get_recipe

    recipe = get_recipe(args.recipe)
    explicit = {}
    for attr, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("input_size", "input_size"),
                      ("balance", "balance"), ("select_metric", "select_metric")):
        v = getattr(args, attr, None)
        if v is not None:
            explicit[key] = v
    if getattr(args, "augment", None) is not None:
        explicit["augment"] = tuple(a.strip() for a in args.augment.split(",") if a.strip())
    recipe = apply_overrides(recipe, args.overrides)
    return apply_overrides(recipe, explicit)


def _command_line(argv) -> str:
    return " ".join(shlex.quote(a) for a in ["cxr-train", *argv])


def _default_out(arch: str) -> Path:
    from cxrviewer.paths import user_runs_dir

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return user_runs_dir() / f"{arch}-{stamp}"


def _install(checkpoint: Path, progress) -> None:
    try:
        from cxrviewer.model_store import install_model
    except ImportError:
        progress.say("model store not available; the model stays in the run folder")
        return
    dest = getattr(install_model(checkpoint), "path", None)
    progress.emit("installed", path=str(dest))
    progress.say(f"installed as {dest}")


def cmd_fit(args, argv) -> int:
    from trainer.loop import FitOptions, fit
    from trainer.progress import Progress

    recipe = _recipe_from_args(args)
    out = args.out or _default_out(args.arch)
    progress = Progress.from_target(args.progress_jsonl, args.quiet)
    try:
        opts = FitOptions(data=args.data, out=out, recipe=recipe, arch=args.arch, seed=args.seed, device=args.device,
                          patient_pattern=args.patient_pattern, merge_classes=args.merge_classes,
                          split_file=args.split_file, resume=args.resume,
                          pretrained=args.pretrained, name=args.name, command=_command_line(argv),
                          decode_workers=args.workers, stop_after_epoch=args.stop_after_epoch, amp=not args.no_amp,
                          deterministic=not args.no_deterministic)
        result = fit(opts, progress)
        if args.install and result.metrics:
            _install(result.checkpoint, progress)
        return EXIT_OK
    finally:
        progress.close()
        _end_distributed()


def _end_distributed() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # shutting down: nothing useful to do with a failure here
        pass


def cmd_evaluate(args, argv) -> int:
    from trainer.loop import evaluate_checkpoint
    from trainer.progress import Progress

    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}_eval_{_dt.datetime.now():%Y%m%d-%H%M%S}")
    progress = Progress.from_target(args.progress_jsonl, args.quiet)
    try:
        evaluate_checkpoint(args.checkpoint, args.data, out, device=args.device, progress=progress,
                            patient_pattern=args.patient_pattern, command=_command_line(argv),
                            merge_classes=args.merge_classes)
        return EXIT_OK
    finally:
        progress.close()


def cmd_compare(args, argv) -> int:
    import time

    import numpy as np

    from trainer import data as D
    from trainer.loop import FitOptions, fit
    from trainer.metrics import summary_row
    from trainer.progress import Progress
    from trainer.report import write_compare
    from cxrviewer.models import model_info

    recipe = _recipe_from_args(args)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for a in archs:
        model_info(a)  # unknown names fail before any decoding
    progress = Progress.from_target(args.progress_jsonl, args.quiet)
    try:
        src = D.discover(args.data, args.patient_pattern, args.merge_classes)
        progress.say(f"loading {len(src.samples)} films once for {len(archs)} architectures")
        fs = D.decode(src, recipe.input_size, recipe.resize, workers=args.workers or None)
        if args.split_file:
            ids = D.split_from_json(fs, json.loads(args.split_file.read_text()))
        else:
            ids = D.split_films(fs, recipe.split, args.seed)
        split_json = D.split_to_json(fs, ids, args.seed, recipe.split)
        args.out.mkdir(parents=True, exist_ok=True)
        from cxrviewer.atomic import atomic_write_text

        atomic_write_text(args.out / "split.json", json.dumps(split_json, indent=1))
        rows = []
        for a in archs:
            t0 = time.monotonic()
            progress.say(f"\n=== {a} ===")
            try:
                res = fit(FitOptions(data=args.data, out=args.out / a, recipe=recipe, arch=a, seed=args.seed,
                                     device=args.device, pretrained=args.pretrained, command=_command_line(argv),
                                     amp=not args.no_amp, deterministic=not args.no_deterministic,
                                     filmset=fs, split_ids=ids), progress)
            except (RuntimeError, ValueError) as e:  # one architecture failing (memory, shapes) must not lose the table
                rows.append({"arch": a, "error": str(e)[:200]})
                continue
            m = res.metrics.get("test") or res.metrics["val"]
            from safetensors import safe_open

            with safe_open(str(res.checkpoint), framework="pt") as fh:
                params = sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys()
                             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
            row = {"arch": a, "split": "test" if res.metrics.get("test") else "val", "params": params,
                   "epochs": res.epochs_run, "best_epoch": res.best_epoch, "minutes": (time.monotonic() - t0) / 60,
                   "ece_after": m.get("ece_after_temperature"), "temperature": res.temperature, **summary_row(m)}
            rows.append(row)
        path = write_compare(args.out, rows, split_json, recipe.name, _command_line(argv))
        progress.say(f"\ncomparison table: {path}")
        print(path.read_text(), file=sys.stderr if args.progress_jsonl == "-" else sys.stdout)
        return EXIT_OK
    finally:
        progress.close()


def cmd_recipes(args) -> int:
    from trainer.recipes import RECIPES, describe, get_recipe

    if args.name:
        r = get_recipe(args.name)
        print(json.dumps(r.to_dict(), indent=1) if args.json else describe(r))
        return EXIT_OK
    if args.json:
        print(json.dumps({n: r.to_dict() for n, r in RECIPES.items()}, indent=1))
        return EXIT_OK
    for n, r in RECIPES.items():
        print(f"{n:8s} {r.description}")
    return EXIT_OK


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from trainer.data import DataError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        if args.cmd == "recipes":
            return cmd_recipes(args)
        if args.cmd == "fit":
            return cmd_fit(args, argv)
        if args.cmd == "evaluate":
            return cmd_evaluate(args, argv)
        if args.cmd == "compare":
            return cmd_compare(args, argv)
        if args.cmd == "publish":
            from trainer.publish import main_publish

            return main_publish(args)
    except KeyboardInterrupt:  # Ctrl-C before training started (reading films): nothing to keep
        print("cxr-train: stopped", file=sys.stderr)
        return EXIT_STOPPED
    except DataError as e:
        _fail(args, f"cxr-train: {e}")
        return EXIT_USAGE
    except ValueError as e:  # recipe overrides, unknown recipe
        _fail(args, f"cxr-train: {e}")
        return EXIT_USAGE
    except KeyError as e:  # unknown architecture
        _fail(args, f"cxr-train: {e.args[0] if e.args else e}")
        return EXIT_USAGE
    except Exception as e:
        from trainer.loop import TrainingInterrupted
        from trainer.state import StateError

        if isinstance(e, TrainingInterrupted):
            print(f"cxr-train: {e}", file=sys.stderr)
            return EXIT_STOPPED
        from trainer.publish import PublishError

        if isinstance(e, (StateError, PublishError)):
            _fail(args, f"cxr-train: {e}")
            return EXIT_USAGE
        try:
            from cxrviewer.checkpoint import CheckpointError
        except ImportError:  # pragma: no cover
            CheckpointError = ()
        if CheckpointError and isinstance(e, CheckpointError):
            _fail(args, f"cxr-train: {e}")
            return EXIT_USAGE
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:  # a full disk, a quota, media gone read-only
            where = Path(e.filename).parent if e.filename else getattr(args, "out", None)
            hint = (f"; the run folder keeps every completed epoch: free some space and continue with "
                    f"--resume --out {args.out}" if args.cmd == "fit" and getattr(args, "out", None) else "")
            _fail(args, f"cxr-train: cannot write in {where or 'the output folder'}: {e.strerror or e}{hint}")
            return EXIT_ERROR
        _fail(args, f"cxr-train: unexpected error: {type(e).__name__}: {e}")
        raise
    return EXIT_USAGE


def _fail(args, message: str) -> None:
    print(message, file=sys.stderr)
    if getattr(args, "progress_jsonl", None) == "-":
        print(json.dumps({"event": "error", "message": message}), flush=True)
    elif getattr(args, "progress_jsonl", None):
        with open(args.progress_jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "error", "message": message}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
