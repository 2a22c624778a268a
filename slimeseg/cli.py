"""The `slimeseg` command line: a thin shell over the library.

Only settings the user typed reach SlimeConfig; every other value is the dataclass default.
Errors the user can fix print one line (`error: ...`) and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import (
    AUGMENT_PRESETS,
    BOTH,
    DEFAULT_MODEL,
    MODELS,
    TRAIN,
    SlimeConfig,
    fast_fit,
    setting_types,
)
from .errors import InputError, SlimeError

EXIT_USAGE_ERROR = 2
EXIT_PARTIAL_FAILURE = 1
EXIT_BUG = 3

log = logging.getLogger(__name__)


def _comma_list(text: str) -> list[str]:
    items = [c.strip() for c in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty class name in '{text}'")
    return items


def _add_model_args(p: argparse.ArgumentParser, default: str | None, init_aware: bool = False,
                    hub_learned: bool = False) -> None:
    shown = (f" (default: {default})" if default else " (default: the one the embeddings were made with)")
    if init_aware:  # train: --init's model unless told otherwise
        shown = f" (default: the model of --init, else {default})"
    p.add_argument("--model", default=None if init_aware else default,
                   help=f"preset ({', '.join(MODELS)}), hub id, local diffusers folder or single-file "
                        f".safetensors checkpoint{shown}")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) to pin" + (
        "; with a hub id as embeddings and no --model, the embeddings' (the model's is then the "
        "one they record)" if hub_learned else ""))
    p.add_argument("--model-config", dest="model_config", metavar="DIR",
                   help="with a single-file --model (an SD 1.x/2.x .safetensors in the original "
                        "layout): a diffusers folder (or preset) of the same architecture whose "
                        "configs to use (default: the preset diffusers infers; offline, from the "
                        "hub cache)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="UNet precision (default: float32 on CPU; on CUDA bfloat16, or float16 "
                        "with loss scaling where bfloat16 is not supported)")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", type=int, dest="max_image_pixels", metavar="N",
                   help="refuse images with more pixels than this, a guard against decompression "
                        "bombs (default: Pillow's, about 89 million; 0: no limit)")


def _apply_input_args(args: argparse.Namespace) -> None:
    from .io import set_max_image_pixels

    limit = getattr(args, "max_image_pixels", None)
    if limit is not None:
        if limit < 0:
            raise InputError(f"--max-image-pixels must be >= 0 (0: no limit), got {limit}")
        set_max_image_pixels(limit or None)


def _flag_type(typ: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a SlimeConfig annotation (int, float | None, Literal[...])."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) is typing.Literal:
        return str, [str(a) for a in args]
    if args:  # X | None
        return _flag_type(args[0])
    return typ, None


def _add_settings(p: argparse.ArgumentParser, train: bool) -> None:
    """Flags for the SlimeConfig fields (all for training; inference-scoped ones otherwise).

    Each flag's name, type, help and default come from the dataclass field, so a setting is
    spelled once; every flag defaults to None, meaning "not set: SlimeConfig decides".
    """
    group = p.add_argument_group("settings (defaults: the paper's, from SlimeConfig)")
    hints = setting_types()
    for f in dataclasses.fields(SlimeConfig):
        scope = f.metadata.get("scope")
        if scope not in (TRAIN, BOTH) or (not train and scope != BOTH):
            continue
        name, default = f.name, f.default
        if hints[name] is bool:
            flag = (f"--no-{name.removeprefix('use_')}" if default else f"--{name}").replace("_", "-")
            group.add_argument(flag, dest=name, action="store_const", const=not default,
                               help=f"{f.metadata['help']} ({'on' if default else 'off'} by default)")
            continue
        typ, choices = _flag_type(hints[name])
        shown = "not set" if default is None else f"{default:.4g}" if isinstance(default, float) else default
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, choices=choices,
                           metavar=None if choices else name.split("_")[-1].upper(),
                           help=f.metadata["help"] if "default" in f.metadata["help"]
                           else f"{f.metadata['help']} (default: {shown})")
    if train:
        group.add_argument("--preset", choices=sorted(AUGMENT_PRESETS),
                           help="augmentation preset of the paper for a dataset (crop ratio, rotation)")
        group.add_argument("--fast-fit", action="store_true",
                           help="a fit in minutes on a CPU: views encoded once, local gradients, most "
                                "steps at half the side, 100 epochs (docs/speed.md; on the lab, within "
                                "half a mIoU point of the default fit from one example with the fused "
                                "method, 2 points below on faces from five; not for --method slime); "
                                "flags you type win over it")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SlimeConfig fields the user actually set on the command line (a preset beneath them)."""
    out = {f.name: getattr(args, f.name) for f in dataclasses.fields(SlimeConfig)
           if getattr(args, f.name, None) is not None}
    if getattr(args, "preset", None):
        out = {**AUGMENT_PRESETS[args.preset], **out}
    if getattr(args, "fast_fit", False):
        out = {**fast_fit(out.get("image_size", SlimeConfig().image_size)), **out}
    try:  # a bad value (--resolution huge, --image-size 100) is the user's error, said in one line
        SlimeConfig().replace(**out)
    except ValueError as exc:
        raise InputError(f"bad setting: {exc}") from None
    return out


def _check_writable_file(path: Path) -> None:
    """Fail before hours of work if the output file cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path}: output is a directory; give a file name like car.safetensors")
    if not parent.is_dir():
        raise InputError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output directory {parent} is not writable")


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .artifact import Learned
    from .examples import prepare_examples
    from .io import as_image_array
    from .segmenter import Segmenter

    if not args.image or not args.mask:
        raise InputError("give at least one --image and one --mask")
    if len(args.image) != len(args.mask):
        raise InputError(f"{len(args.image)} --image but {len(args.mask)} --mask; give one mask per image")
    if len(args.val_image) != len(args.val_mask):
        raise InputError(f"{len(args.val_image)} --val-image but {len(args.val_mask)} --val-mask; "
                         "give one mask per validation image")
    _apply_input_args(args)
    out = Path(args.out)
    _check_writable_file(out)
    with warnings.catch_warnings():  # check every pair before the model loads (fit warns itself)
        warnings.simplefilter("ignore")
        prepare_examples(args.image, args.mask, args.classes)
        if args.val_image:
            prepare_examples(args.val_image, args.val_mask, args.classes)
    check_images = [as_image_array(path) for path in args.check_image]  # read now: bad ones fail early
    for path in args.unlabelled:  # read now: bad ones fail early (fit reads them again, by name)
        as_image_array(path)
    resume = Learned.load(args.resume) if args.resume else None
    parent = Learned.load(args.init) if args.init else None
    model = args.model or (parent.model_id if parent else DEFAULT_MODEL)
    revision = args.revision or (parent.revision if parent else None)
    seg = Segmenter.from_pretrained(model, revision=revision, device=args.device, dtype=args.dtype,
                                    model_config=args.model_config)
    overrides = config_overrides(args)
    if overrides.get("method") == "match":  # no training: the examples' features are the model
        if args.init or args.resume or args.checkpoint_every or args.unlabelled:
            raise InputError("--method match trains nothing: --init, --resume, --checkpoint-every "
                             "and --unlabelled do not apply")
        learned = seg.match(args.image, args.mask, args.classes, **overrides)
        learned.save(out)
        print(f"saved {out} ({len(args.classes)} classes, matching: {len(args.image)} example(s), "
              "no training)")
        _print_example_check(seg, learned, check_images)
        return 0
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    hint = cpu_fit_hint(seg.sd.device.type, overrides, args.fast_fit)
    if hint and not args.quiet:
        print(hint, file=sys.stderr)
    try:
        learned = seg.fit(args.image, args.mask, args.classes, progress=not args.quiet,
                          checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every,
                          resume=resume, init=args.init, val_images=args.val_image or None,
                          val_masks=args.val_mask or None, unlabelled=args.unlabelled or None, **overrides)
    except KeyboardInterrupt:
        if args.checkpoint_every:
            print(f"interrupted; progress saved to {checkpoint} (continue with --resume {checkpoint})",
                  file=sys.stderr)
        else:
            print("interrupted (use --checkpoint-every N to keep progress)", file=sys.stderr)
        return 130
    learned.save(out)
    if args.checkpoint_every and checkpoint.exists():
        checkpoint.unlink()
    losses = learned.history.get("loss") or [float("nan")]
    hist = learned.history
    chosen = (f", kept step {hist['best_step']} (validation mIoU {100 * hist['best_validation']:.1f}%)"
              if "best_step" in hist and learned.config.get("select_best") else "")
    stopped = f", stopped early at step {hist['stopped_early_at']}" if "stopped_early_at" in hist else ""
    print(f"saved {out} ({len(args.classes)} classes, {hist.get('steps_done')} steps, "
          f"final loss {losses[-1]:.4f}{chosen}{stopped})")
    _print_example_check(seg, learned, check_images)
    return 0


def cpu_fit_hint(device_type: str, overrides: dict[str, Any], fast_fit: bool) -> str | None:
    """A one-line pointer to the faster options when a full fit at 512 px or more runs on a CPU
    (tens of minutes there, docs/speed.md); None where it does not apply."""
    cfg = SlimeConfig().replace(**overrides)
    if device_type != "cpu" or fast_fit or cfg.image_size < 512 or cfg.gradients == "local":
        return None
    faster = "--fast-fit fits in minutes" + ("" if cfg.method == "slime" else ", --method match in seconds")
    return (f"note: a full fit at {cfg.image_size} px on a CPU takes tens of minutes; {faster} "
            "(docs/speed.md)")


def _print_example_check(seg: Any, learned: Any, images: list[Any] | None = None) -> None:
    """The poor-example warning (docs/methods.md): how well the examples' own parts are re-found
    in copies of them, or, given images like those to segment (`--check-image`), how well those
    images, labelled by matching, label the examples back (the cycle check)."""
    from .inference import CYCLE_IMAGES, POOR_CYCLE, POOR_EXAMPLE

    if images:
        check, poor = seg.check_examples(learned, images=images), POOR_CYCLE
        print(f"example check: {min(len(images), CYCLE_IMAGES)} --check-image(s), labelled by matching, "
              f"label the examples back at {100 * check:.0f} % mIoU")
    else:
        check, poor = seg.check_examples(learned), POOR_EXAMPLE
        print(f"example check: matching re-finds the examples' parts at {100 * check:.0f} % mIoU in "
              "augmented copies of them")
    if check < poor:
        print(f"warning: that is below {100 * poor:.0f} %: new images may segment poorly; "
              "a clearer example (the object large, its parts visible) or more examples may help",
              file=sys.stderr)


def _pin_hub_artifact(args: argparse.Namespace) -> None:
    """A hub id as LEARNED: `--revision` pins the artifact's repo (without --model, the model's
    revision is the one the artifact records); with --model it stays the model's."""
    from .hub import parse_hub_id

    if args.revision and args.model is None and parse_hub_id(args.learned) is not None:
        if "@" in args.learned:
            raise InputError(f"{args.learned}: give the revision once (@REV or --revision)")
        args.learned, args.revision = f"{args.learned}@{args.revision}", None


def cmd_segment(args: argparse.Namespace) -> int:
    from .job import segment

    _apply_input_args(args)
    _pin_hub_artifact(args)
    if args.ray is not None:
        return _segment_on_ray(args)
    if args.workers or args.format == "parquet" or args.batch_size:
        raise InputError("--workers, --format parquet and --batch-size go with --ray")
    result = segment(args.learned, args.inputs, args.out, format=args.format or "png",
                     overlays=not args.no_overlays, overwrite=args.overwrite,
                     instances=args.instances, model=args.model, revision=args.revision,
                     device=args.device, dtype=args.dtype, model_config=args.model_config,
                     progress=not args.quiet, frames=args.frames, **config_overrides(args))
    return EXIT_PARTIAL_FAILURE if result.failed else 0


def _segment_on_ray(args: argparse.Namespace) -> int:
    """`segment --ray`: the same job on a Ray cluster (slimeseg.distributed)."""
    from .distributed import segment

    result = segment(args.learned, args.inputs, args.out, address=args.ray or None,
                     workers=args.workers, format=args.format or "png",
                     batch_size=args.batch_size or 1, overlays=not args.no_overlays,
                     overwrite=args.overwrite, instances=args.instances, model=args.model, revision=args.revision,
                     device=args.device, dtype=args.dtype, model_config=args.model_config,
                     max_image_pixels=args.max_image_pixels,
                     progress=not args.quiet, frames=args.frames, **config_overrides(args))
    return EXIT_PARTIAL_FAILURE if result.failed else 0


def _segmenter_for(args: argparse.Namespace, learned: Any) -> Any:
    """The segmenter for an artifact: its own model unless --model says otherwise."""
    from .segmenter import Segmenter

    return Segmenter.from_learned(learned, args.model, revision=args.revision, device=args.device,
                                  dtype=args.dtype, name=args.learned, model_config=args.model_config)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .synthetic.tiny import TINY_NOTE, build_tiny_sd, save_tiny_sd

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out}: directory is not empty (use --overwrite)")
    if args.single_file:
        _check_writable_file(Path(args.single_file))
    save_tiny_sd(out, seed=args.seed)
    print(f"wrote a tiny Stable Diffusion to {out}\nnote: {TINY_NOTE}")
    if args.single_file:
        from .synthetic.single_file import save_single_file

        save_single_file(build_tiny_sd(seed=args.seed), args.single_file)
        print(f"wrote the same model as one checkpoint in the original layout to {args.single_file} "
              f"(load it with --model {args.single_file} --model-config {out})")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from PIL import Image

    from .synthetic.scenes import SHAPE_CLASSES, shapes_scene

    out = Path(args.dir)
    (out / "test").mkdir(parents=True, exist_ok=True)
    image, mask = shapes_scene(0, args.size)
    Image.fromarray(image).save(out / "train.png")
    Image.fromarray(mask).save(out / "train_mask.png")
    for s in range(1, args.count + 1):
        Image.fromarray(shapes_scene(s, args.size)[0]).save(out / "test" / f"scene{s}.png")
    (out / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    print(f"wrote {out}/train.png, {out}/train_mask.png (classes {','.join(SHAPE_CLASSES)}) "
          f"and {args.count} test images in {out}/test")
    return 0


# ---------------------------------------------------------------------------- eval, reproduce
EVAL_FORMATS = {"folder": "folder", "pascal-part": "pascal-part", "celeba-hq": "celebamask-hq",
                "celebamask-hq": "celebamask-hq", "slime": "slime"}  # CLI name -> reader


def cmd_eval(args: argparse.Namespace) -> int:
    from .artifact import Learned
    from .datasets import load_dataset
    from .evaluate import evaluate_learned, format_report, match_classes
    from .writers import write_json

    out = Path(args.out)
    _check_writable_file(out)
    _pin_hub_artifact(args)
    fmt = EVAL_FORMATS[args.format]
    if fmt == "pascal-part" and not args.category:
        raise InputError(f"{args.dataset}: --format pascal-part needs --category car or horse")
    learned = Learned.load(args.learned)
    options = {"category": args.category} if fmt == "pascal-part" else {}
    dataset = load_dataset(args.dataset, format=fmt, **options)
    match_classes(learned.classes, dataset, str(args.learned), str(args.dataset))  # before the model loads
    seg = _segmenter_for(args, learned)
    report = evaluate_learned(seg, learned, dataset, per_image=args.per_image, batch_size=args.batch_size,
                              progress=not args.quiet, learned_path=args.learned,
                              dataset_path=args.dataset, dataset_format=fmt, **config_overrides(args))
    for note in report.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    write_json(out, report)
    print(format_report(report))
    print(f"wrote {out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce
    from .writers import write_json

    out = Path(args.out) if args.out else None
    if out is not None:
        _check_writable_file(out)
    if args.model_config:
        raise InputError("reproduce loads diffusers folders and hub ids only; --model-config does not apply")
    result = reproduce(args.model, args.dataset, args.shots, args.seeds, args.data, device=args.device,
                       dtype=args.dtype, revision=args.revision, progress=not args.quiet,
                       echo=None if args.quiet else print, **config_overrides(args))
    print(result.table())
    if out is not None:
        write_json(out, result.to_dict())
        print(f"wrote {out}")
    return 0


def _add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    """`slimeseg eval` and `slimeseg reproduce`."""
    p = sub.add_parser("eval", help="score learned embeddings on a labelled dataset (per-class IoU, mIoU)")
    p.add_argument("learned", help="a .safetensors file made by `slimeseg train`, or a hub id "
                                   "USER/REPO[@REV]")
    p.add_argument("dataset", help="dataset folder (PASCAL-Part: the folder holding Annotations_Part)")
    p.add_argument("--format", choices=list(EVAL_FORMATS), default="folder", help="dataset layout (default folder)")
    p.add_argument("--category", choices=["car", "horse"], help="PASCAL-Part category (with --format pascal-part)")
    p.add_argument("--per-image", action="store_true", dest="per_image",
                   help="also report the reference code's per-image IoU")
    p.add_argument("--batch-size", type=int, default=4, dest="batch_size", help="images per UNet pass")
    p.add_argument("--out", required=True, help="JSON report file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p, None, hub_learned=True)
    _add_settings(p, train=False)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reproduce", help="the paper's k-shot experiment: train and score over seeds "
                                         "(the dataset's augmentation preset and inference tiles unless set)")
    p.add_argument("--dataset", choices=["car", "horse", "celeba"], required=True)
    p.add_argument("--shots", type=int, choices=[1, 10], required=True, help="training examples per seed")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--data", required=True,
                   help="car/horse: PASCAL-Part folder; celeba: SLiMe layout (train_*/, test/) or CelebAMask-HQ folder")
    p.add_argument("--out", help="JSON results file")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_model_args(p, DEFAULT_MODEL)
    _add_settings(p, train=True)
    p.set_defaults(func=cmd_reproduce)


def cmd_push(args: argparse.Namespace) -> int:
    import tempfile

    from . import hub
    from .io import load_image

    if hub.parse_hub_id(args.repo) is None or "@" in args.repo:
        raise InputError(f"{args.repo}: not a hub repo id; give USER/REPO")
    if not Path(args.learned).is_file():
        raise InputError(f"{args.learned}: learned-embeddings file not found (push takes a local file)")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise InputError(f"pushing to the hub needs huggingface_hub ({hub.HUB_HINT})") from None
    _apply_input_args(args)
    images = [(Path(p).name, load_image(p)) for p in args.examples]  # bad files fail before the model
    segmented = []
    if images:
        from .artifact import Learned

        learned = Learned.load(args.learned)
        seg = _segmenter_for(args, learned)
        segmented = [(name, image, seg.predict(image, learned)) for name, image in images]
    if args.folder:
        folder = Path(args.folder)
        if folder.exists() and any(folder.iterdir()):
            raise InputError(f"{folder}: directory is not empty")
        hub.build_folder(args.learned, args.repo, folder, segmented=segmented, eval_report=args.eval)
        print(f"wrote the files of {args.repo} to {folder} (nothing uploaded)")
        return 0
    with tempfile.TemporaryDirectory(prefix="slimeseg-push-") as tmp:
        hub.build_folder(args.learned, args.repo, tmp, segmented=segmented, eval_report=args.eval)
        url = hub.upload(tmp, args.repo, private=args.private)
    print(f"pushed {args.learned} to https://huggingface.co/{args.repo} ({url})")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    try:
        from .app import launch
    except ImportError as exc:
        raise InputError(f"the web app needs Gradio ({exc}); install it with: pip install 'slimeseg[app]'") from None
    launch(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
           revision=args.revision, model_config=args.model_config)
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimeseg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="learn class embeddings from example image(s) and mask(s)")
    p.add_argument("--image", action="append", default=[], help="example image (repeat for few-shot)")
    p.add_argument("--mask", action="append", default=[],
                   help="its mask: index/palette PNG or .npy of class indices (repeat)")
    p.add_argument("--classes", type=_comma_list, required=True,
                   help="comma-separated class names, background first: background,body,wheel")
    p.add_argument("--val-image", action="append", default=[], dest="val_image",
                   help="validation image for --select-best / --patience (repeat; default: "
                        "--validation's rule)")
    p.add_argument("--val-mask", action="append", default=[], dest="val_mask", help="its mask (repeat)")
    p.add_argument("--check-image", action="append", default=[], dest="check_image",
                   help="an image like those you will segment, unlabelled (repeat; the first 10 are "
                        "used): the example check then labels them by matching and sends those "
                        "labels back to the examples, which ranks examples better (docs/methods.md)")
    p.add_argument("--unlabelled", action="append", default=[], metavar="IMAGE",
                   help="an image like those you will segment, unlabelled (repeat): self-training, "
                        "fusion (c): matching labels it from the examples and the fit also trains on "
                        "its confident pixels (--self-train-conf, --self-train-share; docs/methods.md)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--checkpoint-every", type=int, default=0, dest="checkpoint_every",
                   help="save a resumable checkpoint every N steps (and on Ctrl-C)")
    p.add_argument("--checkpoint", help="checkpoint file (default: OUT.ckpt)")
    p.add_argument("--resume", help="continue from a checkpoint made with --checkpoint-every")
    p.add_argument("--init", metavar="LEARNED",
                   help="continue these learned embeddings (a refinement: same model; the same classes, "
                        "or those plus new ones at the end; --refine-steps steps unless --steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p, DEFAULT_MODEL, init_aware=True)
    _add_input_args(p)
    _add_settings(p, train=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("segment", help="segment images with learned embeddings")
    p.add_argument("learned", help="a .safetensors file made by `slimeseg train`, or a hub id "
                                   "USER/REPO[@REV] of one shared with `slimeseg push`")
    p.add_argument("inputs", nargs="+",
                   help="images, clips (.mp4 .mov .mkv .webm .avi, animated .gif: OUT/NAME/000000.png "
                        "per frame and OUT/NAME.overlay.mp4), folders of images, globs "
                        "('photos/**/*.jpg') and .txt or .parquet lists of image paths; each input's "
                        "failure goes to OUT/errors.jsonl")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    p.add_argument("--no-overlays", action="store_true", dest="no_overlays",
                   help="write only the label maps (NAME.png), no NAME.overlay.png")
    p.add_argument("--format", choices=["png", "coco", "parquet"],
                   help="png: NAME.png label maps (default); coco: those and OUT/coco.json (RLE "
                        "masks for CVAT, FiftyOne, Detectron2, ...; pip install 'slimeseg[coco]'); "
                        "parquet (with --ray): one dataset in OUT/labels (path, size, classes, "
                        "label map PNG bytes)")
    p.add_argument("--instances", action="store_true",
                   help="with --format coco: one annotation per connected region of a class, "
                        "not one per class")
    p.add_argument("--frames", metavar="START:STOP:STEP",
                   help="clips: which frames, by index (default: all); e.g. 0:300:2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = p.add_argument_group("on a Ray cluster (pip install 'slimeseg[ray]')")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run on Ray Data: a local cluster, RAY_ADDRESS's, or ADDRESS (auto, "
                          "HOST:6379, ray://HOST:10001)")
    ray.add_argument("--workers", type=int, metavar="N",
                     help="workers, each with the model (default: one per GPU, else one per CPU)")
    ray.add_argument("--batch-size", type=int, dest="batch_size", metavar="N",
                     help="images per UNet pass on a worker (default 1: the labels of a run "
                          "without --ray, bit for bit; more is faster on GPUs, a few pixels differ)")
    _add_model_args(p, None, hub_learned=True)
    _add_input_args(p)
    _add_settings(p, train=False)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("push", help="share learned embeddings on the Hugging Face Hub, with a model "
                                    "card (pip install 'slimeseg[hub]')")
    p.add_argument("learned", help="a .safetensors file made by `slimeseg train`")
    p.add_argument("repo", help="USER/REPO (created if new; log in with `hf auth login` or HF_TOKEN)")
    p.add_argument("--examples", nargs="+", default=[], metavar="IMAGE",
                   help="images to segment with it and show, with their overlays, in the card")
    p.add_argument("--eval", metavar="REPORT", help="a JSON report of `slimeseg eval` for the card")
    p.add_argument("--private", action="store_true", help="make a new repo private")
    p.add_argument("--folder", metavar="DIR",
                   help="write the repo's files (artifact, README.md card, images) to DIR and "
                        "upload nothing")
    _add_model_args(p, None)
    _add_input_args(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("tiny-model", help="write a tiny untrained SD for offline trials and tests")
    p.add_argument("dir", help="output folder (diffusers layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--single-file", dest="single_file", metavar="FILE",
                   help="also write it as one .safetensors checkpoint in the original (LDM) layout")
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("example", help="write a synthetic example (image, mask, test images) to try")
    p.add_argument("dir", help="output folder")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--count", type=int, default=3, help="number of test images")
    p.set_defaults(func=cmd_example)

    _add_eval_parsers(sub)

    p = sub.add_parser("app", help="a local web app: paint an example, train, segment in the browser")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    _add_model_args(p, DEFAULT_MODEL)
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `slimeseg` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to record how an artifact was made
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _quiet_third_party()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", UserWarning)
            warnings.showwarning = _show_warning
            return func(args)
    except SlimeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if args.debug:
            raise
        msg = " ".join(str(exc).split())
        print(f"error: unexpected {type(exc).__name__}: {msg} (a bug in slimeseg? rerun with --debug "
              "for the traceback and report it)", file=sys.stderr)
        return EXIT_BUG


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the user as one `warning: ...` line, without source locations."""
    print(f"warning: {message}", file=sys.stderr)


def _quiet_third_party() -> None:
    """Silence library chatter that says nothing to a slimeseg user."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # older versions: chatter is harmless
        pass


if __name__ == "__main__":
    sys.exit(main())
