"""The forecaster against CDC's CDSi test cases: the pass rate may not drop below the recorded level.

The cases live outside the repository (../shared/data/cdsi-test-cases); on a machine without them
the test skips and says why. benchmarks/cdsi_report.py lists the failing cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sharedcare.vaccination.cdsi import load_schedule
from sharedcare.vaccination.cdsi.testcases import load_cases, run_case

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cdsi-test-cases"

#: pass rates reached (measured minus a hair); raise them when the engine improves
RECORDED = {
    "cdsi-healthy-cases.json": 0.998,  # 816/817 (99.88 %) measured
    "cdsi-underlying-conditions-cases.json": 0.90,  # 233/258 (90.3 %) measured
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_cdc_case_pass_rate(name: str) -> None:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"CDC CDSi test cases not found at {path} (shared data folder absent)")
    schedule = load_schedule("cdc")
    cases = load_cases(path)
    results = [run_case(schedule, case) for case in cases]
    passed = sum(r.passed for r in results)
    rate = passed / len(results)
    failing = [f"{r.case_id} [{r.group}]: {'; '.join(r.differences)}" for r in results if not r.passed]
    print(f"{name}: {passed}/{len(results)} passed ({rate:.1%})")
    assert len(results) > 200
    assert rate >= RECORDED[name], f"pass rate {rate:.1%} below {RECORDED[name]:.1%}:\n" + "\n".join(failing)
