#!/usr/bin/env python
"""Convert many timm checkpoints from the Hugging Face hub into Flax checkpoints in one folder.

    python convert/convert_many.py 'resnetv2_50*' resnetv2_101x1_bit.goog_in21k --output-dir flax_ckpts
    python convert/convert_many.py hf-hub:someone/my-resnetv2 --output-dir out --format msgpack

Each NAME is an ``arch.tag``, an ``arch`` (its default tag), ``hf-hub:<org>/<repo>``, or a
pattern over the pretrained tags (``resnets_jax.list_pretrained``). Every model is converted with
``resnets_jax.convert_checkpoint`` (the library path ``resnets-jax convert`` uses), written
atomically as ``<output-dir>/<name>.<format>``, and verified against timm when timm is installed
(``--no-verify`` to skip). The hub is used through huggingface_hub, so its cache, ``HF_HOME`` /
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` apply. A failure does not stop the others; the summary
table at the end lists every model, and the exit status is 1 if any failed.
"""
import argparse
import os
import re
import sys
import time


def expand(names):
    """Patterns -> the pretrained tags they match, in order, without duplicates."""
    from resnets_jax import list_pretrained
    out = []
    for n in names:
        matches = list_pretrained(n) if any(c in n for c in "*?[") else [n]
        if not matches:
            raise SystemExit(f"error: no pretrained model matches {n!r}")
        out += [m for m in matches if m not in out]
    return out


def output_name(name: str, fmt: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name.replace("hf-hub:", "hf-hub_")) + f".{fmt}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", metavar="NAME", help="arch.tag, arch, hf-hub:org/repo or a pattern")
    p.add_argument("--output-dir", "-o", required=True, help="created if missing")
    p.add_argument("--format", choices=["safetensors", "msgpack"], default="safetensors")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-verify", action="store_true", help="do not check against timm")
    p.add_argument("--cache-dir", help="huggingface_hub cache directory")
    args = p.parse_args(argv)

    from tqdm.auto import tqdm
    import resnets_jax as rj
    from resnets_jax.conversion import timm_available

    names = expand(args.names)
    os.makedirs(args.output_dir, exist_ok=True)
    verify = not args.no_verify and timm_available()
    rows, errors = [], []
    start = time.perf_counter()
    bar = tqdm(names, unit="model", file=sys.stderr, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            res = rj.convert_checkpoint(name, os.path.join(args.output_dir, output_name(name, args.format)),
                                        from_hub=True, format=args.format, force=args.force, verify=verify,
                                        cache_dir=args.cache_dir)
        except Exception as e:  # report it and go on with the others
            rows.append((name, "FAILED", "", "", "", f"{time.perf_counter() - t0:.1f}"))
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        parity = f"{res.parity:.2e}" if res.parity is not None else ("-" if not verify else res.note)
        rows.append((name, "ok", f"{res.num_params:,}", f"{res.file_bytes / 2**20:.1f}", parity,
                     f"{res.seconds:.1f}"))
    bar.close()

    header = ("model", "status", "params", "MiB", "vs timm", "seconds")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    n_ok = sum(r[1] == "ok" for r in rows)
    elapsed = time.perf_counter() - start
    print(f"\n{n_ok}/{len(rows)} converted into {os.path.abspath(args.output_dir)} in {elapsed:.1f}s"
          + ("" if verify else " (not verified against timm: " + ("--no-verify)" if args.no_verify
                                                                   else "timm is not installed)")))
    if errors:
        print("\nfailures:")
        for e in errors:
            print("  " + e.replace("\n", "\n    "))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
