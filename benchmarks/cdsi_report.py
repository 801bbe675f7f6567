"""CDSi forecaster against CDC's test cases: pass rates per vaccine group and every failing case.

Usage: .venv/bin/python benchmarks/cdsi_report.py [--data ../shared/data/cdsi-test-cases] [--quiet]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from sharedcare.vaccination.cdsi import load_schedule
from sharedcare.vaccination.cdsi.testcases import load_cases, run_case

FILES = ("cdsi-healthy-cases.json", "cdsi-underlying-conditions-cases.json")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdsi-test-cases"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quiet", action="store_true", help="pass rates only, no failing-case list")
    args = parser.parse_args()
    schedule = load_schedule("cdc")
    for name in FILES:
        cases = load_cases(args.data / name)
        started = time.perf_counter()
        results = [run_case(schedule, c) for c in cases]
        elapsed = time.perf_counter() - started
        passed = sum(r.passed for r in results)
        print(
            f"\n== {name}: {passed}/{len(results)} passed ({100 * passed / len(results):.1f} %), "
            f"{1000 * elapsed / len(results):.2f} ms per case"
        )
        total: Counter[str] = Counter(r.group for r in results)
        ok: Counter[str] = Counter(r.group for r in results if r.passed)
        for group, n in total.most_common():
            print(f"  {group:<24} {ok[group]:>4}/{n:<4} {100 * ok[group] / n:5.1f} %")
        if not args.quiet:
            for r in results:
                if not r.passed:
                    print(f"  FAIL {r.case_id} [{r.group}]: " + "; ".join(r.differences))


if __name__ == "__main__":
    main()
