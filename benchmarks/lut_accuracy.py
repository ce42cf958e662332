"""How well latency tables predict whole networks, and how much of the error is the machine: one row per
``search lut-check`` result (``lut_check.json``), and for a check repeated on the same networks, the noise floor.

    python benchmarks/lut_accuracy.py CHECK_DIR/lut_check.json [...] [--repeat A.json B.json] [--markdown]

For every check: runtime, family, threads, networks, load average, and for each predictor (sum, affine,
per-kind), leave-one-out Kendall's tau, MAPE and the share within +-10%. ``--repeat A B`` (two checks of the same
networks, minutes apart): the noise floor, i.e. the second measurement predicted by the first, in the same three
figures. No predictor can be shown to beat that on the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from efficientformer.search.predictor import accuracy  # noqa: E402


def rows_of(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    t, s = data["table"], data["summary"]
    return {
        "file": str(path),
        "runtime": t.get("runtime"),
        "family": t.get("family"),
        "threads": t.get("threads"),
        "statistic": t.get("statistic", "median"),
        "networks": s["networks"],
        "load": f"{s['loadavg_start'][0]:.1f} -> {s['loadavg_end'][0]:.1f}",
        "methods": s["methods_leave_one_out"],
    }


def noise_floor(first: str | Path, second: str | Path) -> dict:
    """The second check's measurements predicted by the first's (same networks by name and architecture)."""
    a, b = (json.loads(Path(p).read_text()) for p in (first, second))
    key = lambda r: json.dumps(r.get("arch", r["name"]), sort_keys=True)  # noqa: E731
    ma = {key(r): r["measured_ms"] for r in a["rows"]}
    pairs = [(ma[key(r)], r["measured_ms"]) for r in b["rows"] if key(r) in ma]
    if not pairs:
        raise SystemExit(f"{first} and {second} share no network")
    acc = accuracy([p for p, _ in pairs], [m for _, m in pairs])
    rel = [abs(p - m) / m * 100 for p, m in pairs]
    return {**acc, "networks": len(pairs), "median_diff_percent": statistics.median(rel), "max_diff_percent": max(rel)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checks", nargs="*", help="lut_check.json files")
    ap.add_argument("--repeat", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    if args.markdown:
        print(
            "| runtime | family | threads | statistic | predictor | Kendall tau | MAPE | within +-10% | nets | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.checks:
        r = rows_of(path)
        for method, m in r["methods"].items():
            if args.markdown:
                print(
                    f"| {r['runtime']} | {r['family']} | {r['threads']} | {r['statistic']} | {method} | "
                    f"{m['kendall_tau']:.3f} | {m['mape_percent']:.1f}% | {m['within_10_percent']:.0f}% | "
                    f"{r['networks']} | {r['load']} |"
                )
            else:
                print(
                    f"{r['runtime']:17s} {r['family']} t{r['threads']} {r['statistic']:6s} {method:9s} "
                    f"tau {m['kendall_tau']:.3f}  MAPE {m['mape_percent']:5.1f}%  within10 "
                    f"{m['within_10_percent']:5.1f}%  nets {r['networks']}  load {r['load']}  ({path})"
                )
    for first, second in args.repeat:
        f = noise_floor(first, second)
        print(
            f"noise floor {first} -> {second}: {f['networks']} networks, tau {f['kendall_tau']:.3f}, "
            f"MAPE {f['mape_percent']:.1f}%, within +-10% {f['within_10_percent']:.0f}%, median |diff| "
            f"{f['median_diff_percent']:.1f}%, max {f['max_diff_percent']:.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
