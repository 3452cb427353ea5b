"""``resnets-jax``: the command line, thin over the library.

    resnets-jax list [PATTERN] [--pretrained]
    resnets-jax info NAME
    resnets-jax convert NAME (--checkpoint PATH | --from-hub) --output PATH [--format F] [--force] [--verify]
    resnets-jax convert NAME|PATTERN... --from-hub --output-dir DIR [--format F] [--force] [--verify]
    resnets-jax predict NAME IMAGE|FOLDER|GLOB... [--weights PATH|RUN_DIR] [--num-classes N] [--batch-size N]
                        [--top-k K] [--json] [--use-train-size]
    resnets-jax validate NAME FOLDER [--weights PATH|RUN_DIR] [--num-classes N] [--batch-size N] [--results-file F]
    resnets-jax demo [NAME]
    resnets-jax embed FOLDER --model NAME --output FILE.npz [--weights PATH] [--batch-size N] [--top-k K] [--force]
                      [--use-train-size]
    resnets-jax export NAME --output FILE [--format stablehlo|onnx] [--batch N|dynamic] [--train] [--weights PATH]
                       [--img-size N] [--platforms cpu,cuda] [--force] [--verify]
    resnets-jax finetune NAME DATA_DIR --output DIR [--checkpoint F | --pretrained] [--epochs N] ... [--export F]
                         [--train-split NAME] [--val-split NAME]

--weights / --checkpoint take a checkpoint file or a fine-tuning run directory (its best export);
the class names and eval data config an export records are used.

``--verbose`` (before or after the command) lets the libraries' own logging through (Orbax's and
Grain's absl lines); without it only their errors show, so stderr holds our lines and one
progress bar.

Compiled programs are kept in JAX's persistent compilation cache (``$RESNETS_JAX_CACHE_DIR/xla``,
default ``~/.cache/resnets_jax/xla``), so a second run does not recompile; ``--no-compile-cache``
or ``RESNETS_JAX_NO_COMPILE_CACHE=1`` turns it off.

NAME is timm's ``arch`` or ``arch.tag``, or ``hf-hub:<org>/<repo>`` for a timm model on the hub.
Errors print ``error: ...`` on stderr and exit with status 2 (a missing optional package: ``error:
... needs X: pip install 'resnets-jax[extra]'``, checked before anything is written); ``convert
--output-dir`` goes on past a failed model, prints a table and exits with status 1 if any failed.
Ctrl-C prints ``interrupted`` and exits with status 130, leaving no partial output file; a
closed stdout (``resnets-jax list | head -1``) ends quietly with status 141.
"""
import argparse
import json
import logging
import os
import sys
import warnings

from .. import __version__
from .._optional import MissingExtraError
from ..io.errors import WeightsUnavailableError
from ..registry import list_models, list_pretrained
from .export_cli import add_export_parser
from .interrupts import delivered_interrupts
from ..xla import NO_COMPILE_CACHE_ENV

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away
QUIET_LOGGERS = ("absl", "orbax", "grain", "jax._src.xla_bridge")  # libraries whose info/warnings --verbose shows
# create_model keyword -> the dests a command may give it under (for hints naming the command's flag)
_CREATE_MODEL_FLAGS = {"checkpoint_path": ("weights", "checkpoint", "checkpoint_path"), "num_classes": ("num_classes",)}


def _cmd_list(args):
    names = list_pretrained(args.pattern or "") if args.pretrained else list_models(args.pattern or "")
    print("\n".join(names))


def _cmd_info(args):
    from .info import model_info
    info = model_info(args.name)
    d, t = info["data_config"], info["test_data_config"]
    test = ("same as above" if (t["input_size"], t["crop_pct"]) == (d["input_size"], d["crop_pct"])
            else f"input_size={t['input_size']} crop_pct={t['crop_pct']}")
    print(f"{info['name']}\n"
          f"  architecture: {info['architecture']}\n"
          f"  parameters: {info['parameters']:,}\n"
          f"  GMACs: {info['gmacs']:.3f} at {'x'.join(map(str, info['gmacs_input_size'][1:]))} "
          f"(XLA cost analysis)\n"
          f"  num_classes: {info['num_classes']}\n"
          f"  num_features: {info['num_features']}\n"
          f"  hub: {info['hub'] or '(no pretrained weights)'}\n"
          f"  data config: input_size={d['input_size']} interpolation={d['interpolation']} "
          f"crop_pct={d['crop_pct']} crop_mode={d['crop_mode']} mean={d['mean']} std={d['std']}\n"
          f"  test size (predict, embed; --use-train-size: the size above): {test}")


def _cmd_convert(args):
    from .convert import convert_checkpoint, convert_many
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    kwargs = dict(checkpoint_path=args.checkpoint, from_hub=args.from_hub, force=args.force, verify=args.verify,
                  cache_dir=args.cache_dir, use_ema=args.use_ema, log=log, num_classes=args.num_classes)
    if args.output_dir is None:
        if len(args.names) != 1:
            raise ValueError(f"--output names one file, but {len(args.names)} models were given: use --output-dir")
        res = convert_checkpoint(args.names[0], args.output, format=args.format, **kwargs)
        print(f"wrote {res.output} ({res.format}, {res.num_params:,} parameters, "
              f"{res.file_bytes / 2**20:.1f} MiB) in {res.seconds:.1f}s")
        if args.verify:
            print(f"verification skipped: {res.note}" if res.parity is None else
                  f"verified against timm: max |logit difference| / max |logit| = {res.parity:.2e}")
        return 0
    if args.checkpoint:
        raise ValueError("--output-dir converts hub weights (--from-hub); --checkpoint takes one model and --output")
    results, errors = convert_many(args.names, args.output_dir, format=args.format or "safetensors", **kwargs)
    _print_table(("model", "status", "params", "MiB", "vs timm", "seconds"),
                 [(r.name, "ok", f"{r.num_params:,}", f"{r.file_bytes / 2**20:.1f}",
                   f"{r.parity:.2e}" if r.parity is not None else (r.note or "-"), f"{r.seconds:.1f}")
                  for r in results] + [(name, "FAILED", "", "", "", "") for name, _ in errors])
    print(f"\n{len(results)}/{len(results) + len(errors)} converted into {os.path.abspath(args.output_dir)}")
    if errors:
        print("\nfailures:\n" + "\n".join(f"  {name}: {message}".replace("\n", "\n    ") for name, message in errors))
    return 1 if errors else 0


def _print_table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _cmd_predict(args):
    from .images import expand_image_args
    from .predict import predict_files
    from .weights import load_model
    if args.top_k is not None and args.top_k < 1:  # before anything is loaded: the upper bound needs the model
        raise ValueError(f"--top-k {args.top_k}: expected a number of classes >= 1")
    paths = expand_image_args(args.images)
    loaded = load_model(args.name, args.weights, num_classes=args.num_classes, use_ema=args.use_ema,
                        use_test_size=args.use_test_size)
    res = predict_files(loaded.model, loaded.variables, paths, k=args.top_k, batch_size=args.batch_size,
                        data_config=loaded.data_config, label_names=loaded.label_names,
                        exif_transpose=args.exif_transpose, workers=args.workers)
    if args.json:
        print(json.dumps([{"image": p, "top_k": r} for p, r in res.results]
                         + [{"image": p, "error": why} for p, why in res.failed], indent=2))
    else:
        for path, top in res.results:
            print(path)
            for r in top:
                print(f"  {r['probability']:7.2%}  {r['index']:5d}  {r['label']}")
        if res.failed:
            print(f"\n{len(res.failed)} unreadable, left out:\n" + "\n".join(f"  {p}: {why}" for p, why in res.failed))
    if not res.results:
        raise ValueError(f"none of the {len(paths)} images could be read")


def _cmd_validate(args):
    import dataclasses
    from .validate import run_validate
    res = run_validate(args.name, args.folder, args.weights, num_classes=args.num_classes, use_ema=args.use_ema,
                       use_test_size=args.use_test_size, results_file=args.results_file, force=args.force,
                       batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
    if args.json:
        print(json.dumps(dataclasses.asdict(res), indent=2))
        return
    print(f" * Acc@1 {res.top1:.3f} ({res.top1_err:.3f}) Acc@5 {res.top5:.3f} ({res.top5_err:.3f})  "
          f"loss {res.loss:.4f}  {res.count} images, {res.images_per_s:.1f} images/s"
          + (f"; {len(res.failed)} unreadable, left out:\n" + "\n".join(f"  {p}" for p in res.failed)
             if res.failed else ""))


def _cmd_embed(args):
    from .embed import run_embed
    res = run_embed(args.model, args.folder, args.output, weights=args.weights, force=args.force, k=args.top_k,
                    batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                    use_ema=args.use_ema, use_test_size=args.use_test_size, num_classes=args.num_classes)
    print(f"wrote {res.output}: {res.images} images ({res.computed} computed now, {res.resumed} resumed)"
          + (f"; {len(res.failed)} unreadable, listed as 'failed'" if res.failed else ""))


def _cmd_demo(args):
    from .demo import run
    run(args.name)


def _cmd_finetune(args):
    import dataclasses

    from ..io.run_dir import BEST_EXPORT_NAME, LAST_EXPORT_NAME
    from ..train.finetune import FinetuneConfig, finetune
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    result = finetune(FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    last = result.history[-1] if result.history else {}
    exports = [os.path.join(args.output_dir, LAST_EXPORT_NAME), os.path.join(args.output_dir, BEST_EXPORT_NAME),
               args.export]  # the timm files written: the final weights, the best step's, --export
    print(json.dumps({"checkpoint": result.checkpoint, "step": result.step, "classes": result.classes,
                      "exports": [os.path.abspath(p) for p in exports if p and os.path.exists(p)],
                      **{k: v for k, v in last.items() if k != "seconds"}}))


# finetune's flags that take a FinetuneConfig field: (field, type, help; '(default: ...)' added unless given)
_FINETUNE_FLAGS = (
    ("epochs", int, "passes over the training images"),
    ("batch_size", int, "images per step, over every device and process"),
    ("accum_steps", int, "batches per optimizer update (gradient accumulation)"),
    ("lr", float, "peak learning rate, after the warmup"),
    ("min_lr", float, "learning rate at the end of the cosine decay"),
    ("warmup_epochs", float, "epochs of linear warmup from --warmup-lr"),
    ("warmup_lr", float, "learning rate at the start of the warmup"),
    ("weight_decay", float, "weight decay, on kernels only"),
    ("momentum", float, "SGD momentum"),
    ("smoothing", float, "label smoothing"),
    ("color_jitter", float, "colour jitter of brightness, contrast and saturation, as timm's --color-jitter; 0: off"),
    ("drop_rate", float, "dropout before the classifier"),
    ("drop_path_rate", float, "stochastic depth (drop path) rate"),
    ("img_size", int, "training and validation image size in pixels (default: the model's input size)"),
    ("hflip", float, "probability of a horizontal flip"),
    ("val_fraction", float, "fraction of each class held out for validation; 0: none"),
    ("seed", int, "seed of the split, the data order, the augmentation and the initialization"),
    ("checkpoint_every", int, "steps between checkpoints (default: 0, at the end of each epoch only)"),
    ("workers", int, "image decoding threads per process (default: the CPU count, at most 8)"),
    ("worker_processes", int, "Grain worker processes decoding images (default: 0, threads of this process)"),
    ("keep_checkpoints", int, "latest checkpoints kept, besides the best one"),
)


def _add_finetune_parser(sub) -> None:
    from ..train.finetune import FinetuneConfig
    from ..train.step import OPTIMIZERS
    d = FinetuneConfig("", "", "")
    s = sub.add_parser("finetune", help="fine-tune on a folder of images (one sub-folder per class)")
    s.add_argument("model", help="arch or arch.tag")
    s.add_argument("data_dir", help="a folder with one sub-folder of images per class, or with train/ and val/ "
                                    "folders of them (timm's layout: trains on train/, validates on val/)")
    s.add_argument("--output", "-o", dest="output_dir", required=True, metavar="DIR",
                   help="checkpoints (Orbax, DIR/checkpoints/<step>) and metrics.json go here")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE",
                     help="start from this timm checkpoint, or a run directory's best export (new head if needed)")
    src.add_argument("--pretrained", action="store_true", help="start from the tag's hub weights")
    s.add_argument("--resume", action="store_true", help="continue from DIR's latest checkpoint")
    s.add_argument("--export", metavar="FILE.safetensors", help="write the result as a timm checkpoint")
    s.add_argument("--num-classes", type=int, help="classes of the new classifier (default: the number of class "
                                                  "folders)")
    s.add_argument("--opt", choices=OPTIMIZERS, default=d.opt, help="optimizer: SGD with Nesterov momentum, "
                   "momentum SGD, or AdamW (default: %(default)s)")
    for name, typ, what in _FINETUNE_FLAGS:
        s.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(d, name),
                       help=what if "default:" in what else f"{what} (default: %(default)s)")
    s.add_argument("--train-split", metavar="NAME", help="DATA_DIR's training folder (default: found, e.g. train/)")
    s.add_argument("--val-split", metavar="NAME",
                   help="DATA_DIR's validation folder (default: found, e.g. val/ or validation/)")
    s.add_argument("--best-metric", choices=("val_acc", "val_loss"), default=d.best_metric,
                   help="the best checkpoint, kept besides the latest ones, is best at this (default: %(default)s)")
    s.add_argument("--interpolation", default=d.interpolation, help="the training crops' resize: 'random' (bilinear "
                   "or bicubic per image, timm's --train-interpolation), or a PIL filter name (default: %(default)s)")
    s.add_argument("--bf16", action="store_true", help="bfloat16 compute (parameters stay float32)")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    s.set_defaults(fn=_cmd_finetune)


def _add_use_ema(s) -> None:
    s.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="from a training checkpoint, its EMA weights (state_dict_ema, else model_ema) when it has "
                        "them, else its state_dict, as timm's load_checkpoint (default); --no-use-ema: state_dict")


def _add_test_size(s) -> None:
    size = s.add_mutually_exclusive_group()
    size.add_argument("--use-test-size", dest="use_test_size", action="store_true", default=True,
                      help="the tag's test_input_size / test_crop_pct where it has them (default, as timm's "
                           "inference.py and validate.py)")
    size.add_argument("--use-train-size", dest="use_test_size", action="store_false",
                      help="the train input_size / crop_pct even when the tag has a test size (timm's option)")


def _add_weights(s, hub_default: bool = True) -> None:
    s.add_argument("--weights", "--checkpoint", dest="weights", metavar="PATH",
                   help="a timm or resnets_jax checkpoint file, or a fine-tuning run directory (its best export)"
                        + ("; default: the tag's hub weights" if hub_default else ""))
    s.add_argument("--num-classes", type=int, metavar="N",
                   help="the classes of a --weights file that does not record them (a timm checkpoint with a new "
                        "head); default: the file's record, else the tag's")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnets-jax", description=__doc__.split("\n")[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--no-compile-cache", action="store_true",
                   help=f"do not use the persistent compilation cache (or set {NO_COMPILE_CACHE_ENV}=1)")
    _add_verbose(p, False)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="architectures (or pretrained arch.tag names) matching a pattern")
    s.add_argument("pattern", nargs="?", help="a shell-style pattern, e.g. 'resnetv2_50*' (default: every name)")
    s.add_argument("--pretrained", action="store_true",
                   help="the arch.tag names with hub weights (timm's list_pretrained) instead of architectures")
    s.set_defaults(fn=_cmd_list)
    s = sub.add_parser("info", help="parameters and data config of a model")
    s.add_argument("name", help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.set_defaults(fn=_cmd_info)
    s = sub.add_parser("convert", help="convert a timm checkpoint into a Flax checkpoint file")
    s.add_argument("names", nargs="+", metavar="NAME",
                   help="arch, arch.tag, hf-hub:<org>/<repo>, or (with --output-dir) a pattern over pretrained tags")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="a timm checkpoint file (.safetensors, .bin, .pth), or a fine-tuning run directory")
    src.add_argument("--from-hub", action="store_true", help="the tag's weights on the Hugging Face hub")
    out = s.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", "-o", metavar="PATH", help="the output file (one model)")
    out.add_argument("--output-dir", metavar="DIR", help="one <name>.<format> file per model (created if missing)")
    s.add_argument("--format", choices=["safetensors", "msgpack"],
                   help="the output format (default: msgpack for a .msgpack output, else safetensors)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--verify", action="store_true",
                   help="check the written file against timm before it is moved into place (needs torch and timm)")
    s.add_argument("--num-classes", type=int, metavar="N",
                   help="the classes of a --checkpoint file that does not record them (a timm checkpoint with a "
                        "new head)")
    _add_use_ema(s)
    s.add_argument("--cache-dir", metavar="DIR",
                   help="huggingface_hub's cache directory (default: its own, $HF_HUB_CACHE or ~/.cache/huggingface)")
    s.set_defaults(fn=_cmd_convert)
    s = sub.add_parser("predict", help="classify images (files, folders, globs)")
    s.add_argument("name", help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="an image file, a folder (recursive) or a glob")
    _add_weights(s)
    s.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    s.add_argument("--workers", type=int, help="decoding threads (default: the CPU count)")
    s.add_argument("--top-k", type=int, metavar="K",
                   help="classes per image, 1 to the model's number of classes (default: 5, or the number of "
                        "classes if fewer)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("--exif-transpose", action="store_true",
                   help="rotate photos as their EXIF orientation says (timm does not, nor do we by default)")
    _add_use_ema(s)
    _add_test_size(s)
    s.set_defaults(fn=_cmd_predict)
    s = sub.add_parser("demo", help="convert a checkpoint, classify a photo, compare with timm")
    s.add_argument("name", nargs="?", default="resnetv2_50.a1h_in1k", help="arch.tag (default: %(default)s)")
    s.set_defaults(fn=_cmd_demo)
    s = sub.add_parser("embed", help="pooled embeddings (or top-k) of every image under a folder; resumable")
    s.add_argument("folder", help="every image below it, recursively")
    s.add_argument("--model", required=True, help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.add_argument("--output", "-o", required=True, metavar="FILE.npz", help="the output file")
    _add_weights(s)
    s.add_argument("--batch-size", type=int, default=64,
                   help="images per step over all devices and hosts (default: %(default)s)")
    s.add_argument("--top-k", type=int, metavar="K",
                   help="the top K predictions instead of embeddings, K from 1 to the model's number of classes "
                        "(default: embeddings)")
    s.add_argument("--workers", type=int, help="decoding threads per process (default: the CPU count)")
    s.add_argument("--force", action="store_true",
                   help="replace an existing output; discard an unfinished run made with other settings")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_use_ema(s)
    _add_test_size(s)
    s.set_defaults(fn=_cmd_embed)
    _add_validate_parser(sub)
    _add_finetune_parser(sub)
    add_export_parser(sub, _add_weights, _add_use_ema)
    for s in subcommands(p).values():  # also after the command: `resnets-jax finetune ... --verbose`
        _add_verbose(s, argparse.SUPPRESS)
    return p


def _add_validate_parser(sub) -> None:
    from .validate import DEFAULT_BATCH_SIZE
    s = sub.add_parser("validate", help="top-1/top-5 accuracy and loss on a labelled folder (timm's validate.py)")
    s.add_argument("name", help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.add_argument("folder", help="one sub-folder of images per class (or a root with val/)")
    _add_weights(s)
    s.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per step over all devices and hosts (default: {DEFAULT_BATCH_SIZE}, as timm)")
    s.add_argument("--workers", type=int, help="decoding threads per process (default: CPU count, at most 8)")
    s.add_argument("--results-file", metavar="FILE.json", help="write the results there as JSON")
    s.add_argument("--force", action="store_true", help="replace an existing --results-file")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_use_ema(s)
    _add_test_size(s)
    s.set_defaults(fn=_cmd_validate)


def _add_verbose(parser, default) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="show the libraries' own log lines (Orbax, Grain, JAX) on stderr")


def subcommands(parser: argparse.ArgumentParser) -> dict:
    """``{command name: its parser}`` of ``build_parser()``."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _quiet_libraries() -> None:
    """Only errors from the libraries' loggers (absl: Orbax, Grain): their info and warning lines
    would come between our lines and through the progress bar."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with jax's and orbax's dependencies; nothing to quiet without it
        pass


def _message(e: Exception, parser: argparse.ArgumentParser, args) -> str:
    """The error's message; a ``WeightsUnavailableError`` names the command's flags."""
    if not isinstance(e, WeightsUnavailableError) or args is None:
        return str(e)
    actions = subcommands(parser)[args.command]._actions
    flags = {kw: a.option_strings[0] for kw, dests in _CREATE_MODEL_FLAGS.items() for a in actions
             if a.dest in dests and a.option_strings}
    return e.cli_message(flags)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (``HighBitDepthWarning``, an XLA option left out, ...) as one line, without
    the source location and line Python's format adds."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    parser, args = build_parser(), None
    try:
        args = parser.parse_args(argv)
        if not args.verbose:
            _quiet_libraries()
        if args.no_compile_cache:  # `import resnets_jax` turned it on (xla.default_compilation_cache)
            from ..xla import disable_default_compilation_cache
            disable_default_compilation_cache()
        with delivered_interrupts(), warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one "warning:" line each, as the command's own
            code = args.fn(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        return code
    except KeyboardInterrupt:  # Ctrl-C: what was being written is removed on the way out
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `resnets-jax list | head -1`: the reader has gone; end quietly
        # Python's advice (docs: signal, "Note on SIGPIPE"): point stdout at devnull, so that the
        # interpreter's last flush at exit does not fail (and print) again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except (ValueError, OSError, MissingExtraError) as e:  # CheckpointError is a ValueError
        print(f"error: {_message(e, parser, args)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
