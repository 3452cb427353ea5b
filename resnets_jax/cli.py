"""``resnets-jax``: the command line, thin over the library.

    resnets-jax list [PATTERN] [--pretrained]
    resnets-jax info NAME
    resnets-jax predict NAME IMAGE... [--weights PATH] [--top-k K] [--json]
    resnets-jax demo [NAME]
"""
import argparse
import json
import sys

from . import weights
from .registry import get_pretrained_cfg, list_models, list_pretrained


def _cmd_list(args):
    names = list_pretrained(args.pattern or "") if args.pretrained else list_models(args.pattern or "")
    print("\n".join(names))


def _cmd_info(args):
    import jax
    import numpy as np
    from .builder import build_model
    from .data import resolve_data_config
    model = build_model(args.name)
    spec = jax.ShapeDtypeStruct((1, 64, 64, model.in_chans), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), spec)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
    cfg = get_pretrained_cfg(args.name)
    print(f"{model.variant}\n  parameters: {n:,}\n  num_classes: {model.num_classes}\n"
          f"  hub: {cfg.get('hf_hub_id') or '(no pretrained weights)'}\n"
          f"  data config: {resolve_data_config(model)}")


def _cmd_predict(args):
    from .builder import create_model
    from .predict import predict
    if args.weights:
        model, variables = create_model(args.name, checkpoint_path=args.weights)
    else:
        model, variables = create_model(args.name, pretrained=True)
    results = predict(model, variables, args.images, k=args.top_k)
    if args.json:
        print(json.dumps([{"image": p, "top_k": r} for p, r in zip(args.images, results)], indent=2))
        return
    for path, res in zip(args.images, results):
        print(path)
        for r in res:
            print(f"  {r['probability']:7.2%}  {r['index']:5d}  {r['label']}")


def _cmd_demo(args):
    from .demo import run
    run(args.name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnets-jax", description=__doc__.split("\n")[0].strip("`: "))
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="architectures (or pretrained arch.tag names) matching a pattern")
    s.add_argument("pattern", nargs="?")
    s.add_argument("--pretrained", action="store_true")
    s.set_defaults(fn=_cmd_list)
    s = sub.add_parser("info", help="parameters and data config of a model")
    s.add_argument("name")
    s.set_defaults(fn=_cmd_info)
    s = sub.add_parser("predict", help="classify images")
    s.add_argument("name")
    s.add_argument("images", nargs="+")
    s.add_argument("--weights", help="a timm checkpoint file (default: the tag's hub weights)")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_predict)
    s = sub.add_parser("demo", help="convert a checkpoint, classify a photo, compare with timm")
    s.add_argument("name", nargs="?", default="resnetv2_50.a1h_in1k")
    s.set_defaults(fn=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, weights.CheckpointError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
