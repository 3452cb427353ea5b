"""Time reading a resnest101e checkpoint (~185 MB .bin) without torch vs torch.load(weights_only=True).

Each read runs in a fresh process (the import is not timed, only the load call); the two
readers alternate, the file stays in the page cache, and the median of N reads is reported.

    python benchmarks/torchfree_read.py [--path /tmp/resnest101e.bin] [--n 5]
"""
import argparse
import os
import statistics
import subprocess
import sys

_TORCHFREE = """
import sys, time
sys.modules["torch"] = None
from resnets_jax.io.torch_zip import load_torch_file
t = time.perf_counter(); sd = load_torch_file(sys.argv[1]); dt = time.perf_counter() - t
assert sum(v.nbytes for v in sd.values()) > 0
print(dt)
"""
_TORCH = """
import sys, time, torch
t = time.perf_counter(); sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
dt = time.perf_counter() - t
assert sum(v.nbytes for v in sd.values()) > 0
print(dt)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="/tmp/resnest101e.bin")
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(args.path):
        import timm
        import torch
        torch.save(timm.create_model("resnest101e").state_dict(), args.path)
    times = {"torch-free": [], "torch.load": []}
    for _ in range(args.n):
        for name, code in (("torch-free", _TORCHFREE), ("torch.load", _TORCH)):
            out = subprocess.run([sys.executable, "-c", code, args.path], capture_output=True,
                                 text=True, check=True).stdout
            times[name].append(float(out.split()[-1]))
    size = os.path.getsize(args.path) / 1e6
    for name, ts in times.items():
        print(f"{name:11s} median {statistics.median(ts):.3f} s  ({size:.0f} MB; "
              f"all: {', '.join(f'{t:.3f}' for t in ts)})")


if __name__ == "__main__":
    main()
