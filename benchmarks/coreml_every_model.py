"""Core ML: does every registered model convert? (issue 13's acceptance: "Core ML converts every registered model")

    OMP_NUM_THREADS=2 python benchmarks/coreml_every_model.py --img-size 64 \\
        --out benchmarks/results/coreml_every_model.json
    python benchmarks/coreml_every_model.py --table benchmarks/results/coreml_every_model.json

For each name in ``edgezoo.list_models()`` (random weights: conversion does not depend on their values) the full
model — every block, its default widths — is exported with ``export_model(format="coreml")`` and checked
structurally (input/output names and shapes; Core ML runs on Apple systems only). ``--img-size`` converts at a
smaller input than the default to save time: the op set does not depend on it (ViT/Mixer are built for that size,
with their position embedding/token MLP sized to it). Names already in ``--out`` are skipped, so a run cut short
by its time budget (``--budget-s``) resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgezoo
from edgezoo.deploy import export_model
from edgezoo.registry import get_entry


def convert_one(name: str, size: int | None, workdir: Path) -> dict:
    entry = get_entry(name)
    img = int(size or entry.default_cfg["input_size"][1])
    kwargs = {"img_size": img} if entry.family in ("vit", "mlp_mixer") else {}
    model = edgezoo.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, img, img, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    row = {"model": name, "img": img, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    try:
        res = export_model(model, workdir / f"{name}.mlpackage", format="coreml", example_input=x)
        problems = res.details.get("problems") or []
        row.update(ok=not problems, structure=res.details.get("structure"), problems=problems)
    except Exception as exc:  # recorded, not raised: the point is the list of what fails
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    row["convert_s"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="default: every registered model")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: each model's own)")
    p.add_argument("--budget-s", type=float, default=600, help="start no new conversion after this many seconds")
    p.add_argument("--out", help="JSON-lines results file (appended; names in it are skipped)")
    p.add_argument("--table", help="print the markdown table of a results file and exit")
    args = p.parse_args(argv)
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        print("| model | params (M) | img | converts | structure / error | convert s |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['params_m']} | {r['img']} | {'yes' if r['ok'] else '**no**'} | "
                  f"{r.get('structure') or r.get('error') or '; '.join(r.get('problems', []))} | {r['convert_s']} |")
        ok = sum(r["ok"] for r in rows)
        print(f"\n{ok} of {len(rows)} converted; registered: {len(edgezoo.list_models())}")
        return 0
    done = set()
    if args.out and Path(args.out).exists():
        done = {json.loads(line)["model"] for line in Path(args.out).read_text().splitlines() if line.strip()}
    names = [n for n in (args.models or edgezoo.list_models()) if n not in done]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgezoo-coreml-") as tmp:
        for name in names:
            if time.perf_counter() - start > args.budget_s:
                print(f"budget spent; left: {names[names.index(name):]}", file=sys.stderr)
                break
            row = convert_one(name, args.img_size, Path(tmp))
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            for f in Path(tmp).iterdir():  # one package at a time on disk
                import shutil

                shutil.rmtree(f) if f.is_dir() else f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
