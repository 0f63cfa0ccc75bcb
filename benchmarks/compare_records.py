"""Compare two `mai-scan` JSON Lines outputs record by record, keyed by path (records
come in completion order, so line order is ignored), for "behaviour unchanged" checks
before and after a change:

    mai-scan DIR --no-state --jsonl before.jsonl      # on the old commit
    mai-scan DIR --no-state --jsonl after.jsonl       # on the new one
    python benchmarks/compare_records.py before.jsonl after.jsonl

Prints how many lines are byte-identical and every field that differs; exit status 1
on any difference. `--ignore FIELD` (repeatable) leaves a field out (mai.scan/1
records carry no timing fields, so nothing is left out by default).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def load(path: Path) -> dict[str, tuple[dict, bytes]]:
    return {(r := json.loads(line))["path"]: (r, line) for line in path.read_bytes().splitlines() if line.strip()}


def compare(before: Path, after: Path, ignore: set[str]) -> int:
    a, b = load(before), load(after)
    problems = [f"only in {before.name}: {p}" for p in sorted(set(a) - set(b))]
    problems += [f"only in {after.name}: {p}" for p in sorted(set(b) - set(a))]
    identical = 0
    for p in sorted(set(a) & set(b)):
        (ra, la), (rb, lb) = a[p], b[p]
        if la == lb:
            identical += 1
            continue
        fields = sorted(k for k in set(ra) | set(rb) if k not in ignore and ra.get(k) != rb.get(k))
        problems += [f"{p}: {k}: {ra.get(k)!r} -> {rb.get(k)!r}" for k in fields]
    verdicts = Counter(r["verdict"] for r, _ in a.values())
    print(f"{before} vs {after}: {len(a)} / {len(b)} records, {identical} byte-identical lines, "
          f"{len(problems)} differences; verdicts before: {dict(verdicts)}")
    for line in problems[:50]:
        print(f"  {line}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--ignore", action="append", default=[], metavar="FIELD")
    args = ap.parse_args()
    return compare(args.before, args.after, set(args.ignore))


if __name__ == "__main__":
    sys.exit(main())
