"""`stjax export RUN_DIR [--step N] [--kind adapter merged] [--out DIR]`: export a saved
checkpoint of a training run (the newest by default), as the run exports at its end;
`--push-to-hub ORG/NAME` uploads it (model card included)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run directory of stjax train (with config.yaml and checkpoints/)")
    parser.add_argument("--step", type=int, help="the checkpoint step (default: the newest)")
    parser.add_argument("--kind", nargs="+", choices=["adapter", "merged", "model"],
                        help="what to write (default: the run's train.export)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/export-step-N)")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="then upload the export to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)

    from stjax.training.export import export_checkpoint

    out = export_checkpoint(args.run_dir, step=args.step, out_dir=args.out, kinds=args.kind)
    print(f"stjax export: wrote {out}")
    if args.push_to_hub:
        from stjax.hub import push_folder

        print(f"stjax export: pushed to {push_folder(out, args.push_to_hub, private=args.private)}")
    return 0
