"""``resnets-jax export MODEL -o FILE [--format stablehlo|onnx] [--batch N|dynamic] [--train]
[--weights PATH | --checkpoint PATH] [--img-size N] [--platforms cpu,cuda] [--force] [--verify]``:
the argument parser and the command, over ``tools/export.export_model``."""


def _cmd_export(args):
    import sys

    from .export import export_model
    res = export_model(args.model, args.output, format=args.format, batch=args.batch, train=args.train,
                       weights=args.weights, num_classes=args.num_classes, img_size=args.img_size,
                       platforms=args.platforms.split(",") if args.platforms else None, force=args.force,
                       verify=args.verify, use_ema=args.use_ema, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {', '.join(res.files)} ({res.format}, {'batch ' + str(res.batch) if res.batch else 'any batch'}) "
          f"in {res.seconds:.1f}s")
    if res.parity is not None:
        print(f"verified against {res.reference}: max |logit difference| / max |logit| = "
              + ", ".join(f"{v:.2e} (batch {b})" for b, v in res.parity.items()))


def add_export_parser(sub, add_weights, add_use_ema) -> None:
    s = sub.add_parser("export", help="write a model as a StableHLO (jax.export) or ONNX file to serve without "
                                      "resnets_jax, its data config beside it")
    s.add_argument("model", help="arch, arch.tag or hf-hub:<org>/<repo>")
    s.add_argument("--output", "-o", required=True, metavar="FILE",
                   help="the artifact (e.g. m.stablehlo, m.onnx); FILE.json (data config, class names) "
                        "and for StableHLO FILE.weights.safetensors go beside it")
    s.add_argument("--format", choices=("stablehlo", "onnx"),
                   help="stablehlo: jax.export, NHWC, weights as inputs; onnx: timm's exporter (needs the onnx "
                        "extra), NCHW. Default: onnx for a .onnx FILE, else stablehlo")
    s.add_argument("--batch", default="dynamic", metavar="N|dynamic", help="a fixed batch size, or 'dynamic' "
                                                                           "(default): any")
    s.add_argument("--train", action="store_true", help="training mode: batch statistics (StableHLO also "
                                                        "returns the new running statistics)")
    add_weights(s)
    s.add_argument("--img-size", type=int, metavar="N", help="input height and width (default: the data config's)")
    s.add_argument("--platforms", metavar="P[,P]", help="StableHLO's platforms among cpu, cuda, rocm, tpu "
                   "(default: this backend's); more than one, or no cpu, bakes in no CPU-only lowering")
    s.add_argument("--force", action="store_true", help="overwrite existing output files")
    s.add_argument("--verify", action="store_true",
                   help="run the artifact in its runtime (batch 1 and 3, or --batch) and hold it against timm "
                        "(ours without timm) before it is moved into place")
    add_use_ema(s)
    s.set_defaults(fn=_cmd_export)
