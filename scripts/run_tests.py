"""Run every test file of tests/ in its own pytest process and add up the results (see scripts/test.sh)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def main() -> int:
    # Files named on the command line, else every test file.
    files = sys.argv[1:] or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    totals: dict[str, int] = {}
    bad: list[str] = []
    crashed = 0  # files that ended without a failure count (killed by a signal, or pytest itself failed)
    start = time.time()
    for path in files:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        tail = (done.stdout.strip().splitlines() or [""])[-1]
        counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(tail)}
        for kind, n in counts.items():
            totals[kind] = totals.get(kind, 0) + n
        ok = done.returncode == 0 or (done.returncode == 5 and not counts.get("failed"))  # 5: nothing collected
        print(f"{path}: {tail or '(no summary)'} [exit {done.returncode}, {time.time() - start:.0f} s]", flush=True)
        if not ok:
            bad.append(path)
            crashed += not (counts.get("failed") or counts.get("error"))
            sys.stdout.write(done.stdout[-6000:] + done.stderr[-3000:])
    failed = totals.get("failed", 0) + totals.get("error", 0) + crashed
    summary = f"{totals.get('passed', 0)} passed, {failed} failed"
    if totals.get("skipped"):
        summary += f", {totals['skipped']} skipped"
    print(f"files with problems: {', '.join(bad)}" if bad else f"all {len(files)} test files passed")
    print(summary)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
