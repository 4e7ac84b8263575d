"""The ``splitkern`` console entry point."""

from __future__ import annotations

import argparse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="list usable backends and built kernels")
    sub.add_parser("kernels", help="static kernel report (registers, spills, smem, tensor cores) for sm_80/sm_90",
                   add_help=False)
    demo = sub.add_parser("demo", help="SplitLinear vs nn.Linear on built-in data")
    demo.add_argument("--features", type=int, default=2048)
    demo.add_argument("--batch", type=int, default=256)
    demo.add_argument("--groups", type=int, default=4)
    demo.add_argument("--repeats", type=int, default=10)
    demo.add_argument("--device", default="cpu")
    return parser


def main(argv=None) -> None:
    args, rest = _parser().parse_known_args(argv)
    if args.command == "kernels":
        from splitkern.kernels import main as kernels_main
        raise SystemExit(kernels_main(rest))
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from splitkern.info import main as info_main
        info_main()
    elif args.command == "demo":
        from splitkern.demo import run_demo
        run_demo(args.features, args.batch, args.groups, args.repeats, device=args.device)


if __name__ == "__main__":
    main()
