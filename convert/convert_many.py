#!/usr/bin/env python
"""Convert many timm checkpoints from the Hugging Face hub into Flax checkpoints in one folder: a
thin wrapper over ``resnets-jax convert NAME... --from-hub --output-dir DIR`` (kept for scripts
written against release 0.1).

    python convert/convert_many.py 'resnetv2_50*' resnetv2_101x1_bit.goog_in21k --output-dir flax_ckpts
    resnets-jax convert 'resnetv2_50*' resnetv2_101x1_bit.goog_in21k --from-hub --output-dir flax_ckpts --verify
"""
import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", metavar="NAME", help="arch.tag, arch, hf-hub:org/repo or a pattern")
    p.add_argument("--output-dir", "-o", required=True, help="created if missing")
    p.add_argument("--format", choices=["safetensors", "msgpack"], default="safetensors")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-verify", action="store_true", help="do not check against timm")
    p.add_argument("--cache-dir", help="huggingface_hub cache directory")
    args = p.parse_args(argv)
    from resnets_jax.tools import cli
    cmd = ["convert", *args.names, "--from-hub", "--output-dir", args.output_dir, "--format", args.format]
    cmd += ["--force"] * args.force + ["--verify"] * (not args.no_verify)
    cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    return cli.main(cmd)


if __name__ == "__main__":
    sys.exit(main())
