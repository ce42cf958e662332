"""Run-to-run spread of the ratios a benchmark command reports: the same command run N times should give every
ratio within +-5% (issue #13's reproducibility goal). Reads the JSON files `efficientformer benchmark` wrote.

    python benchmarks/spread.py benchmarks/results/cpu2_goal1_run{1,2,3}.json

Prints, for every ratio (and every row's fraction of the GEMM ceiling), the value of each run, the mean and the
largest deviation from the mean in percent; exits 1 if any deviation exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def collect(results: list[dict], statistic: str = "median") -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for res in results:
        if statistic == "median":
            comps = res.get("comparisons", [])
        else:  # recompute the ratios from every call's time (rows keep them) with another statistic
            pick = {"min": min, "p25": lambda v: sorted(v)[len(v) // 4]}[statistic]
            comps = _ratios(res, pick)
        for c in comps:
            series.setdefault(f"{c['model']} b{c['batch']}: {c['ratio']}", []).append(c["value"])
        for r in res["rows"]:
            if r.get("ceiling_frac") is not None:
                key = f"{r['model']} {r['impl']} {r['backend']} b{r['batch']}: fraction of GEMM ceiling"
                series.setdefault(key, []).append(r["ceiling_frac"])
    return series


def _ratios(res: dict, pick) -> list[dict]:
    rows = [r for r in res["rows"] if r.get("times_ms")]
    t = {(r["model"], r["impl"], r["backend"], r["batch"]): pick(r["times_ms"]) for r in rows}
    out = []
    for c in res.get("comparisons", []):
        num = (c["model"], "ours", c["numerator"], c["batch"])
        den_model = "mobilenetv2_100" if c["denominator"] == "mobilenetv2_100" else c["model"]
        den = (
            den_model,
            "timm" if den_model == "mobilenetv2_100" else "ours",
            c["numerator"] if den_model == "mobilenetv2_100" else c["denominator"],
            c["batch"],
        )
        if num in t and den in t:
            out.append({**c, "value": t[num] / t[den]})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="benchmark JSON files of the same command")
    p.add_argument(
        "--statistic",
        default="median",
        choices=("median", "min", "p25"),
        help="per-row statistic the ratios are formed from (min/p25 need rows with times_ms)",
    )
    p.add_argument("--tolerance", type=float, default=5.0, help="allowed deviation from the mean, percent")
    args = p.parse_args()
    results = [json.loads(Path(f).read_text()) for f in args.files]
    worst = 0.0
    print(f"| quantity | {' | '.join(f'run {i + 1}' for i in range(len(results)))} | mean | max dev. |")
    print(f"|---|{'---:|' * len(results)}---:|---:|")
    for key, values in collect(results, args.statistic).items():
        if len(values) != len(results):
            continue  # a row missing from some run (a failed build): nothing to compare
        mean = statistics.fmean(values)
        dev = max(abs(v / mean - 1) for v in values) * 100
        worst = max(worst, dev)
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {key} | {cells} | {mean:.3f} | {dev:.1f}% |")
    loads = [tuple(round(x, 2) for x in r["environment"]["loadavg_start"]) for r in results]
    print(f"\nload average at the start of each run: {loads}; largest deviation {worst:.1f}%")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
