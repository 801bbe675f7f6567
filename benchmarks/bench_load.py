"""Read and search under load: 64 concurrent connections (wrk) against the FHIR API.

Scenarios: read by id, ``Observation?patient=…&code=…&_sort=-date``, ``Patient?family=…``,
``_include``, and ``Patient/[id]/$everything`` for median-sized patients. Baseline, measured in
the same run on the same database: a trivial FastAPI endpoint that reads one JSON row by primary
key (``baseline_app.py``). Both servers run with the same uvicorn settings, one at a time.

Every FHIR request carries a bearer token (the API answers 401 without one): the trusted demo
system client's, obtained from the server's token endpoint (``client_credentials``), which the access
decision does not restrict; ``bench_access.py`` compares it with a professional's. The baseline
endpoint has no authentication.

Run: ``python benchmarks/bench_load.py [--database-url URL] [--bundles N]``. Without a database
URL, a scratch PostgreSQL database is filled with N Synthea bundles first (all 479 by default).
Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    register_demo_client,
    report,
    scratch_database,
    server_env,
    synthea_bundles,
    system_token,
)

CONNECTIONS = 64
SCENARIOS = ("read", "obs", "family", "include", "everything")
DURATION = os.environ.get("BENCH_DURATION", "15s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(app: str, url: str, workers: int, factory: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    path = os.pathsep.join(p for p in (str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **server_env(url), PYTHONPATH=path)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if factory:
        cmd.append("--factory")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    for _ in range(120):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{app} did not start")


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _exited_children_cpu(backends: list[int]) -> float:
    """CPU seconds of the backends that ended, which the postmaster (the backends' parent)
    collected: with 64 connections the server's pools close and open connections during a run,
    and a meter reading only the live backends lost the CPU of those that ended (its figures
    even went negative). The postmaster counts every database's backends: a figure for a machine
    where nothing else uses PostgreSQL during the run."""
    for pid in backends:
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            fields = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[13]) + int(fields[14])) / _TICK
    return 0.0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class CpuMeter:
    """CPU seconds used by a server (its process tree) and by the PostgreSQL backends of its
    database: the cost of a request in CPU time, which other work on a shared machine slows
    down but does not inflate, unlike its throughput."""

    def __init__(self, server: subprocess.Popen[bytes], url: str) -> None:
        self.server, self.engine = server, create_engine(url, poolclass=NullPool)

    def __call__(self) -> float:
        return sum(self.split())

    def split(self) -> tuple[float, float]:
        """CPU seconds of the server's processes, and of its database's backends."""
        with self.engine.connect() as conn:
            backends = list(
                conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            )
        app = sum(_proc_cpu(p) for p in _descendants(self.server.pid))
        return app, sum(_proc_cpu(p) for p in backends) + _exited_children_cpu(backends)


def _wrk(
    port: int,
    paths: list[str],
    workdir: Path,
    name: str,
    connections: int = CONNECTIONS,
    duration: str = "",
    token: str | None = None,
    cpu: CpuMeter | None = None,
) -> dict[str, float]:
    script = workdir / f"{name}.lua"
    quoted = ",\n".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in paths)
    script.write_text(
        f"local paths = {{\n{quoted}\n}}\n"
        "math.randomseed(os.time())\n"
        "request = function() return wrk.format('GET', paths[math.random(#paths)]) end\n"
    )
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []  # wrk.format adds -H headers
    cpu_before = cpu.split() if cpu else (0.0, 0.0)
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{duration or DURATION}",
            "--latency",
            "--timeout",
            "30s",  # wrk's default (2 s) drops the slowest answers from the figures
            *auth,
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk output without {label}%:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{name}: {errors.group(1)} failed responses")
    timeouts = re.search(r"Socket errors:.*timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    app_ms, db_ms = (
        (
            (after - before) * 1000 / max(requests, 1)
            for after, before in zip(cpu.split(), cpu_before, strict=True)
        )
        if cpu
        else (0.0, 0.0)
    )
    return {
        "cpu_ms": app_ms + db_ms,
        "cpu_app_ms": app_ms,
        "cpu_db_ms": db_ms,
        "rps": rps,
        "p50": latency("50"),
        "p99": latency("99"),
        "timeouts": float(timeouts.group(1)) if timeouts else 0.0,
    }


def _samples(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    rng = random.Random(7)
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT type, id FROM resource WHERE NOT deleted ORDER BY pk")).all()
        pks = [str(p) for p in conn.execute(text("SELECT pk FROM resource WHERE NOT deleted")).scalars()]
        # patients from the compartment table, not from index rows (whose layout may change)
        pairs = list(
            conn.execute(
                text(
                    "SELECT c.patient_id, t.system, t.code FROM resource_compartment c JOIN idx_token t "
                    "ON t.res_pk = c.res_pk AND t.param = 'code' AND t.rtype = 'Observation' "
                    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                )
            ).all()
        )
        families = list(
            conn.execute(
                text("SELECT DISTINCT norm FROM idx_string WHERE rtype='Patient' AND param='family'")
            ).scalars()
        )
        # Synthea bundle patients (those with encounters); the bulk tiers add record-less patients
        sizes = conn.execute(
            text(
                "SELECT c.patient_id, count(*) FROM resource_compartment c WHERE c.patient_id IN "
                "(SELECT e.patient_id FROM resource_compartment e JOIN resource r ON r.pk = e.res_pk "
                "AND r.type = 'Encounter') GROUP BY 1 ORDER BY 2, 1"
            )
        ).all()
    engine.dispose()
    median = sizes[len(sizes) // 2][1]
    around = [p for p, n in sizes if abs(n - median) <= max(5, median // 10)]
    rng.shuffle(pairs)
    return {
        "read": [f"/fhir/{t}/{i}" for t, i in rng.sample(ids, min(2000, len(ids)))],
        "baseline": [f"/row/{p}" for p in rng.sample(pks, min(2000, len(pks)))],
        "obs": [
            f"/fhir/Observation?patient=Patient/{p}&code={s}|{c}&_sort=-date" for p, s, c in pairs[:2000]
        ],
        "family": [f"/fhir/Patient?family={f[:4]}" for f in families],
        "include": [
            f"/fhir/Observation?patient=Patient/{p}&code={s}|{c}&_include=Observation:encounter"
            for p, s, c in pairs[:2000]
        ],
        "everything": [f"/fhir/Patient/{p}/$everything?_count=1000" for p in around[:200]],
        "median": [str(median)],
    }


def _fill(url: str, bundles: int | None) -> None:
    import orjson

    from sharedcare.access.policy import category_of
    from sharedcare.fhir.bundle import BundleProcessor
    from sharedcare.fhir.service import FhirService
    from sharedcare.storage.engine import make_engine
    from sharedcare.storage.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    processor = BundleProcessor(FhirService(engine, classify=category_of))  # as `sharedcare import`
    for _name, raw in synthea_bundles(bundles, include_shared=True):
        processor.process(orjson.loads(raw))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="an already imported database (skips the import)")
    parser.add_argument("--bundles", type=int, default=None, help="Synthea bundles to import (default all)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} (the baseline always runs)",
    )
    args = parser.parse_args()
    chosen = [s for s in args.scenarios.split(",") if s]
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    with ExitStack() as stack:
        url = args.database_url
        if url is None:
            url = stack.enter_context(scratch_database())
            _fill(url, args.bundles)
        samples = _samples(url)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results: dict[str, dict[str, float]] = {}
        single: dict[str, dict[str, float]] = {}
        proc, port = _serve("baseline_app:app", url, args.workers, factory=False)
        try:
            meter = CpuMeter(proc, url)
            results["baseline"] = _wrk(port, samples["baseline"], workdir, "baseline", cpu=meter)
            single["baseline"] = _wrk(
                port, samples["baseline"], workdir, "baseline", connections=1, duration="5s"
            )
        finally:
            proc.terminate()
            proc.wait()
        register_demo_client(url)
        proc, port = _serve("sharedcare.app:create_app", url, args.workers, factory=True)
        try:
            token = system_token(port)
            for name in chosen:
                results[name] = _wrk(port, samples[name], workdir, name, token=token, cpu=CpuMeter(proc, url))
                # the same requests one at a time: the service time, without queueing
                single[name] = _wrk(
                    port, samples[name], workdir, name, connections=1, duration="5s", token=token
                )
        finally:
            proc.terminate()
            proc.wait()
    base = results["baseline"]["rps"]
    labels = {
        "baseline": "baseline: one JSON row by key",
        "read": "read by id (target ≥60 % of baseline, p99 < 15 ms)",
        "obs": "Observation?patient&code&_sort=-date (p99 < 50 ms)",
        "family": "Patient?family= (p99 < 50 ms)",
        "include": "Observation?…&_include=Observation:encounter (p99 < 50 ms)",
        "everything": f"$everything, median patient ({samples['median'][0]} res.) (p50 < 100 ms)",
    }
    report(
        f"Read and search under load ({CONNECTIONS} connections, {DURATION} each, {args.workers} workers)",
        [
            (
                labels[k],
                f"{r['rps']:8.0f} req/s ({r['rps'] / base:6.1%} of baseline)  "
                f"p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms",
            )
            for k, r in results.items()
        ],
    )
    base_cpu = results["baseline"]["cpu_ms"]
    report(
        "CPU time per request at 64 connections (server processes + their PostgreSQL backends; "
        "capacity ratio = baseline CPU / CPU, robust to other load on a shared machine)",
        [
            (
                labels[k],
                f"{r['cpu_ms']:7.2f} ms CPU/req  (capacity {base_cpu / r['cpu_ms']:6.1%} of baseline)",
            )
            for k, r in results.items()
            if r["cpu_ms"] > 0
        ],
    )
    report(
        "The same requests over one connection (service time, no queueing)",
        [
            (labels[k], f"{r['rps']:8.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms")
            for k, r in single.items()
        ],
    )


if __name__ == "__main__":
    main()
