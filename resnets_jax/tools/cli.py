"""``resnets-jax``: the command line, thin over the library.

    resnets-jax list [PATTERN] [--pretrained]
    resnets-jax info NAME
    resnets-jax convert NAME (--checkpoint PATH | --from-hub) --output PATH [--format F] [--force] [--verify]
    resnets-jax convert NAME|PATTERN... --from-hub --output-dir DIR [--format F] [--force] [--verify]
    resnets-jax predict NAME IMAGE... [--weights PATH] [--top-k K] [--json] [--use-train-size]
    resnets-jax demo [NAME]
    resnets-jax embed FOLDER --model NAME --output FILE.npz [--weights PATH] [--batch-size N] [--top-k K] [--force]
                      [--use-train-size]
    resnets-jax finetune NAME DATA_DIR --output DIR [--checkpoint F | --pretrained] [--epochs N] ... [--export F]

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
import os
import sys

from .._optional import MissingExtraError
from ..registry import list_models, list_pretrained
from ..xla import NO_COMPILE_CACHE_ENV

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away


def _cmd_list(args):
    names = list_pretrained(args.pattern or "") if args.pretrained else list_models(args.pattern or "")
    print("\n".join(names))


def _cmd_info(args):
    from .info import model_info
    info = model_info(args.name)
    d = info["data_config"]
    print(f"{info['name']}\n"
          f"  architecture: {info['architecture']}\n"
          f"  parameters: {info['parameters']:,}\n"
          f"  GMACs: {info['gmacs']:.3f} at {'x'.join(map(str, info['gmacs_input_size'][1:]))} "
          f"(XLA cost analysis)\n"
          f"  num_classes: {info['num_classes']}\n"
          f"  num_features: {info['num_features']}\n"
          f"  hub: {info['hub'] or '(no pretrained weights)'}\n"
          f"  data config: input_size={d['input_size']} interpolation={d['interpolation']} "
          f"crop_pct={d['crop_pct']} crop_mode={d['crop_mode']} mean={d['mean']} std={d['std']}")


def _cmd_convert(args):
    from .convert import convert_checkpoint, convert_many
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    kwargs = dict(checkpoint_path=args.checkpoint, from_hub=args.from_hub, force=args.force, verify=args.verify,
                  cache_dir=args.cache_dir, use_ema=args.use_ema, log=log)
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
    from ..factory import create_model
    from .predict import predict
    if args.weights:
        model, variables = create_model(args.name, checkpoint_path=args.weights, use_ema=args.use_ema)
    else:
        model, variables = create_model(args.name, pretrained=True)
    results = predict(model, variables, args.images, k=args.top_k, exif_transpose=args.exif_transpose,
                      use_test_size=args.use_test_size)
    if args.json:
        print(json.dumps([{"image": p, "top_k": r} for p, r in zip(args.images, results)], indent=2))
        return
    for path, res in zip(args.images, results):
        print(path)
        for r in res:
            print(f"  {r['probability']:7.2%}  {r['index']:5d}  {r['label']}")


def _cmd_embed(args):
    from .embed import run_embed
    res = run_embed(args.model, args.folder, args.output, weights=args.weights, force=args.force, k=args.top_k,
                    batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                    use_ema=args.use_ema, use_test_size=args.use_test_size)
    print(f"wrote {res.output}: {res.images} images ({res.computed} computed now, {res.resumed} resumed)"
          + (f"; {len(res.failed)} unreadable, listed as 'failed'" if res.failed else ""))


def _cmd_demo(args):
    from .demo import run
    run(args.name)


def _cmd_finetune(args):
    import dataclasses

    from ..train.finetune import FinetuneConfig, finetune
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    result = finetune(FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    last = result.history[-1] if result.history else {}
    print(json.dumps({"checkpoint": result.checkpoint, "step": result.step, "classes": result.classes,
                      "export": args.export, **{k: v for k, v in last.items() if k != "seconds"}}))


def _add_finetune_parser(sub) -> None:
    from ..train.finetune import FinetuneConfig
    from ..train.step import OPTIMIZERS
    d = FinetuneConfig("", "", "")
    s = sub.add_parser("finetune", help="fine-tune on a folder of images (one sub-folder per class)")
    s.add_argument("model", help="arch or arch.tag")
    s.add_argument("data_dir", help="a folder with one sub-folder of images per class")
    s.add_argument("--output", "-o", dest="output_dir", required=True, metavar="DIR",
                   help="checkpoints (Orbax, DIR/checkpoints/<step>) and metrics.json go here")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="start from this timm checkpoint (new head if needed)")
    src.add_argument("--pretrained", action="store_true", help="start from the tag's hub weights")
    s.add_argument("--resume", action="store_true", help="continue from DIR's latest checkpoint")
    s.add_argument("--export", metavar="FILE.safetensors", help="write the result as a timm checkpoint")
    s.add_argument("--num-classes", type=int, help="default: the number of class folders")
    s.add_argument("--opt", choices=OPTIMIZERS, default=d.opt)
    for name, typ in [("epochs", int), ("batch_size", int), ("accum_steps", int), ("lr", float), ("min_lr", float),
                      ("warmup_epochs", float), ("warmup_lr", float), ("weight_decay", float), ("momentum", float),
                      ("smoothing", float), ("drop_rate", float), ("drop_path_rate", float), ("img_size", int),
                      ("hflip", float), ("val_fraction", float), ("seed", int), ("checkpoint_every", int),
                      ("workers", int), ("worker_processes", int), ("keep_checkpoints", int)]:
        s.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(d, name),
                       help=f"default: {getattr(d, name)}")
    s.add_argument("--best-metric", choices=("val_acc", "val_loss"), default=d.best_metric,
                   help="the best checkpoint, kept besides the latest ones, is best at this")
    s.add_argument("--interpolation", default=d.interpolation, help="'random' (bilinear or bicubic), or one of them")
    s.add_argument("--bf16", action="store_true", help="bfloat16 compute (parameters stay float32)")
    s.add_argument("--no-progress", dest="progress", action="store_false")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnets-jax", description=__doc__.split("\n")[0].replace("``", ""))
    p.add_argument("--no-compile-cache", action="store_true",
                   help=f"do not use the persistent compilation cache (or set {NO_COMPILE_CACHE_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="architectures (or pretrained arch.tag names) matching a pattern")
    s.add_argument("pattern", nargs="?")
    s.add_argument("--pretrained", action="store_true")
    s.set_defaults(fn=_cmd_list)
    s = sub.add_parser("info", help="parameters and data config of a model")
    s.add_argument("name")
    s.set_defaults(fn=_cmd_info)
    s = sub.add_parser("convert", help="convert a timm checkpoint into a Flax checkpoint file")
    s.add_argument("names", nargs="+", metavar="NAME",
                   help="arch, arch.tag, hf-hub:<org>/<repo>, or (with --output-dir) a pattern over pretrained tags")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="a timm checkpoint file (.safetensors, .bin, .pth)")
    src.add_argument("--from-hub", action="store_true", help="the tag's weights on the Hugging Face hub")
    out = s.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", "-o", metavar="PATH", help="the output file (one model)")
    out.add_argument("--output-dir", metavar="DIR", help="one <name>.<format> file per model (created if missing)")
    s.add_argument("--format", choices=["safetensors", "msgpack"],
                   help="default: msgpack for a .msgpack output, else safetensors")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--verify", action="store_true",
                   help="check the written file against timm before it is moved into place (needs torch and timm)")
    _add_use_ema(s)
    s.add_argument("--cache-dir", help="huggingface_hub cache directory")
    s.set_defaults(fn=_cmd_convert)
    s = sub.add_parser("predict", help="classify images")
    s.add_argument("name")
    s.add_argument("images", nargs="+")
    s.add_argument("--weights", help="a timm or resnets_jax checkpoint file (default: the tag's hub weights)")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true")
    s.add_argument("--exif-transpose", action="store_true",
                   help="rotate photos as their EXIF orientation says (timm does not, nor do we by default)")
    _add_use_ema(s)
    _add_test_size(s)
    s.set_defaults(fn=_cmd_predict)
    s = sub.add_parser("demo", help="convert a checkpoint, classify a photo, compare with timm")
    s.add_argument("name", nargs="?", default="resnetv2_50.a1h_in1k")
    s.set_defaults(fn=_cmd_demo)
    s = sub.add_parser("embed", help="pooled embeddings (or top-k) of every image under a folder; resumable")
    s.add_argument("folder")
    s.add_argument("--model", required=True, help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.add_argument("--output", "-o", required=True, metavar="FILE.npz")
    s.add_argument("--weights", help="a timm or resnets_jax checkpoint file (default: the tag's hub weights)")
    s.add_argument("--batch-size", type=int, default=64, help="images per step over all devices and hosts")
    s.add_argument("--top-k", type=int, help="top-k predictions instead of embeddings")
    s.add_argument("--workers", type=int, help="decoding threads per process (default: CPU count)")
    s.add_argument("--force", action="store_true",
                   help="replace an existing output; discard an unfinished run made with other settings")
    s.add_argument("--no-progress", action="store_true")
    _add_use_ema(s)
    _add_test_size(s)
    s.set_defaults(fn=_cmd_embed)
    _add_finetune_parser(sub)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.no_compile_cache:  # `import resnets_jax` turned it on (xla.default_compilation_cache)
            from ..xla import disable_default_compilation_cache
            disable_default_compilation_cache()
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
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
