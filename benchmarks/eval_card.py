"""The default model's card figures: every `mai eval` the card reports, in one run.

    python benchmarks/eval_card.py --shared ../shared/data --wild /path/to/wild \
        --model mai-clip-wild --model mai-clip-modern --out card.json

Each row is `mai_train.eval_report.run_eval`, the function behind `mai eval`, with
the arguments shown in its `command` column; probes on the CPU score from the
feature cache ($MAI_HOME/features), so a second model on the same backbone costs
seconds. Prints a Markdown table per model and one of true-positive rates per
generator at the stored threshold; `--out` keeps every report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mai_train.eval_report import EvalRequest, run_eval  # noqa: E402

# (label, data key, split, real split, perturbation, limit)
RUNS = [
    ("modern val (calibration data)", "modern", "val", None, None, None),
    ("modern test_generator + val reals", "modern", "test_generator", "val", None, None),
    ("  same, web (0.6x + JPEG q75)", "modern", "test_generator", "val", "web", None),
    ("  same, JPEG q50", "modern", "test_generator", "val", "jpeg50", None),
    ("wild test_generator + test_real", "wild", "test_generator", "test_real", None, None),
    ("  same, web", "wild", "test_generator", "test_real", "web", None),
    ("  same, JPEG q50", "wild", "test_generator", "test_real", "jpeg50", None),
    ("wild val (calibration data)", "wild", "val", None, None, None),
    ("CIFAKE val (400 sampled)", "cifake", "val", None, None, 400),
    ("ImageNet photos", "imagenet", "all", None, None, None),
    ("  same, JPEG q50", "imagenet", "all", None, "jpeg50", None),
    ("ForenSynths stand-in", "forensynths", "all", None, None, None),
    ("  same, web", "forensynths", "all", None, "web", None),
]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", required=True, help="the shared data folder (modern-train.tar, ...)")
    ap.add_argument("--wild", required=True, help="the folder built by python -m mai_train.datasets.wild")
    ap.add_argument("--model", action="append", required=True, help="model name or folder (repeatable)")
    ap.add_argument("--out", default=None, help="write every report here as JSON")
    args = ap.parse_args()
    shared = Path(args.shared)
    data = {"modern": shared / "modern-train.tar", "cifake": shared / "cifake-train.tar",
            "imagenet": shared / "imagenet-samples-real.tar", "forensynths": shared / "forensynths-samples.tar",
            "wild": Path(args.wild)}
    everything: dict[str, list[dict]] = {}
    for model in args.model:
        rows = []
        print(f"\n### {model}\n")
        print("| data | command | n | ROC-AUC | TPR at 5% FPR | TPR | FPR | accuracy | uncertain |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, key, split, real, perturb, limit in RUNS:
            rep = run_eval(EvalRequest(model, str(data[key]), split=split, limit=limit, device="cpu",
                                       real_split=real, perturb=perturb))
            cmd = f"mai eval --data {key} --split {split}" + (f" --real-split {real}" if real else "") + \
                (f" --perturb {perturb}" if perturb else "") + (f" --limit {limit}" if limit else "")
            rows.append({"label": label, "command": cmd, "perturbation": perturb, **rep})
            print(f"| {label} | `{cmd}` | {rep['n']} | {_f(rep['roc_auc'])} | {_pct(rep['tpr_at_fpr_5pct'])} | "
                  f"{_pct(rep['tpr'])} | {_pct(rep['fpr'])} | {_pct(rep['accuracy'])} | "
                  f"{_pct(rep.get('uncertain_fraction'))} |", flush=True)
        print("\nPer generator, TPR at the stored threshold (fakes caught / fakes):\n")
        print("| data | generator | caught | TPR |")
        print("|---|---|---|---|")
        for r in rows:
            if r["perturbation"]:
                continue
            for src, m in sorted(r["per_source"].items()):
                if m["fake"]:
                    print(f"| {r['label']} | {src} | {m['tp']}/{m['fake']} | {_pct(m['tpr'])} |")
        everything[model] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(everything, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
