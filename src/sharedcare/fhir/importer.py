"""Import FHIR data files: Bundles (JSON), NDJSON (optionally gzipped), and tar archives of them.

Transaction and batch Bundles are processed as such (one database transaction per transaction
Bundle). Loose resources (NDJSON lines, collection Bundles, single resources) are written with
their own ids as upserts, in chunks of one transaction each, with conditional references
resolved as in a transaction. Dependencies are loaded first (organisations, locations,
practitioners, patients) so that conditional references find their targets.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine

from sharedcare.fhir.bundle import BundleProcessor
from sharedcare.fhir.errors import FhirError
from sharedcare.fhir.service import FhirService
from sharedcare.fhir.store import Classifier
from sharedcare.storage.engine import refresh_statistics

CHUNK = 500
# Types referenced (often conditionally) by the rest; imported first.
FIRST = (
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "Medication",
    "Patient",
    "RelatedPerson",
    "Encounter",
)


@dataclass
class ImportReport:
    """What an import did: resources written per type, and the errors met (file: message)."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class _Source:
    name: str
    kind: str  # "bundle" | "ndjson"
    read: Callable[[], bytes]
    rtype_hint: str = ""


def _sort_key(source: _Source) -> tuple[int, str]:
    base = Path(source.name).name.split(".")[0]
    hint = source.rtype_hint or base
    rank = FIRST.index(hint) if hint in FIRST else len(FIRST)
    # Synthea's shared hospital/practitioner bundles go before patient bundles.
    if source.kind == "bundle" and ("hospitalInformation" in base or "practitionerInformation" in base):
        rank = -1
    return rank, source.name


def _kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith((".ndjson", ".ndjson.gz")):
        return "ndjson"
    if lower.endswith((".json", ".json.gz")):
        return "bundle"
    return None


def _decompress(name: str, data: bytes) -> bytes:
    return gzip.decompress(data) if name.lower().endswith(".gz") else data


def discover(paths: list[Path]) -> list[_Source]:
    """Every importable file under ``paths`` (folders are walked, archives opened)."""
    sources: list[_Source] = []
    for path in paths:
        if path.is_dir():
            sources.extend(discover(sorted(p for p in path.rglob("*") if p.is_file())))
            continue
        lower = path.name.lower()
        if lower.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")):
            sources.extend(_archive_sources(path))
            continue
        kind = _kind(path.name)
        if kind:
            sources.append(
                _Source(
                    str(path),
                    kind,
                    _file_reader(path),
                    path.name.split(".")[0] if kind == "ndjson" else "",
                )
            )
    return sorted(sources, key=_sort_key)


def _file_reader(path: Path) -> Callable[[], bytes]:
    return lambda: _decompress(path.name, path.read_bytes())


def _archive_sources(path: Path) -> list[_Source]:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _kind(m.name)]
    sources = []
    for member in members:

        def read(p: Path = path, name: str = member.name) -> bytes:
            with tarfile.open(p) as t:
                fh = t.extractfile(name)
                assert fh is not None
                return _decompress(name, fh.read())

        kind = _kind(member.name)
        assert kind is not None
        hint = Path(member.name).name.split(".")[0] if kind == "ndjson" else ""
        sources.append(_Source(f"{path}:{member.name}", kind, read, hint))
    return sources


def _iter_archive(path: Path, names: set[str]) -> Iterator[tuple[str, bytes]]:
    """Stream an archive once, yielding the wanted members (a .tar.xz cannot be seeked cheaply)."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name in names:
                fh = tar.extractfile(member)
                assert fh is not None
                yield member.name, _decompress(member.name, fh.read())


class Importer:
    """Writes the contents of FHIR files through the service (validation included unless disabled)."""

    def __init__(self, service: FhirService) -> None:
        self.service = service
        self.processor = BundleProcessor(service)

    def import_bytes(self, name: str, kind: str, data: bytes, report: ImportReport) -> None:
        report.files += 1
        if kind == "ndjson":
            self._ndjson(name, io.BytesIO(data), report)
            return
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            report.errors.append(f"{name}: not valid JSON ({exc})")
            return
        if (
            isinstance(doc, dict)
            and doc.get("resourceType") == "Bundle"
            and doc.get("type") in ("transaction", "batch")
        ):
            self._bundle(name, doc, report)
        elif isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            resources = [e.get("resource") for e in doc.get("entry", []) if isinstance(e, dict)]
            self._upsert(name, [r for r in resources if isinstance(r, dict)], report)
        elif isinstance(doc, dict):
            self._upsert(name, [doc], report)
        else:
            report.errors.append(f"{name}: not a FHIR resource or Bundle")

    def _bundle(self, name: str, bundle: dict[str, Any], report: ImportReport) -> None:
        try:
            result = self.processor.process(bundle)
        except FhirError as err:
            report.errors.append(f"{name}: {err.diagnostics}")
            return
        for entry, response in zip(bundle.get("entry", []), result["entry"], strict=True):
            status = str(response.get("response", {}).get("status", ""))
            if status.startswith("2"):
                rtype = (entry.get("resource") or {}).get("resourceType") or entry["request"]["url"].split(
                    "/"
                )[0]
                report.counts[rtype] += 1
            else:
                report.errors.append(f"{name}: entry {entry.get('fullUrl')}: {status}")

    def _ndjson(self, name: str, stream: IO[bytes], report: ImportReport) -> None:
        chunk: list[dict[str, Any]] = []
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report.errors.append(f"{name}:{number}: not valid JSON ({exc})")
                continue
            chunk.append(res)
            if len(chunk) >= CHUNK:
                self._upsert(name, chunk, report)
                chunk = []
        if chunk:
            self._upsert(name, chunk, report)

    def _upsert(self, name: str, resources: list[dict[str, Any]], report: ImportReport) -> None:
        entries = []
        for res in resources:
            rtype, rid = res.get("resourceType"), res.get("id")
            method, url = ("PUT", f"{rtype}/{rid}") if rid else ("POST", str(rtype))
            entries.append({"resource": res, "request": {"method": method, "url": url}})
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        try:
            self.processor.process(bundle)
        except FhirError as err:
            if len(resources) > 1:
                # one bad resource must not cost the chunk: retry one by one to name the culprits
                for res in resources:
                    self._upsert(name, [res], report)
                return
            res = resources[0]
            report.errors.append(f"{name}: {res.get('resourceType')}/{res.get('id')}: {err.diagnostics}")
            return
        for res in resources:
            report.counts[str(res.get("resourceType"))] += 1


def import_paths(
    engine: Engine,
    paths: list[Path],
    *,
    validate: bool = True,
    progress: Callable[[str, int], None] | None = None,
    classify: Classifier | None = None,
) -> ImportReport:
    """Import everything under ``paths``; ``progress(name, resources_so_far)`` is called per file.

    ``classify`` is the store's data classifier (the platform passes the access module's)."""
    service = _service(engine, validate, classify)
    importer = Importer(service)
    report = ImportReport()
    sources = discover(paths)
    archives: dict[Path, list[_Source]] = {}
    for source in sources:
        archive, sep, _member = source.name.partition(":")
        if sep and Path(archive).suffix in (".xz", ".gz", ".tgz", ".tar"):
            archives.setdefault(Path(archive), []).append(source)
    for source in sources:
        archive, sep, _member = source.name.partition(":")
        if sep and Path(archive) in archives:
            continue
        importer.import_bytes(source.name, source.kind, source.read(), report)
        if progress:
            progress(source.name, report.total)
    for archive_path, members in archives.items():
        by_name = {m.name.partition(":")[2]: m for m in members}
        held: list[tuple[_Source, bytes]] = []
        for name, data in _iter_archive(archive_path, set(by_name)):
            source = by_name[name]
            if source.kind == "ndjson" and source.rtype_hint not in FIRST:
                held.append((source, data))  # dependents wait for the whole archive's dependencies
                continue
            importer.import_bytes(source.name, source.kind, data, report)
            if progress:
                progress(name, report.total)
        for source, data in sorted(held, key=lambda item: _sort_key(item[0])):
            importer.import_bytes(source.name, source.kind, data, report)
            if progress:
                progress(source.name, report.total)
    if report.total:
        refresh_statistics(engine)
    return report


def _service(engine: Engine, validate: bool, classify: Classifier | None) -> FhirService:
    from sharedcare.fhir.validation import store_issues

    return FhirService(engine, validator=store_issues if validate else None, classify=classify)


def run_import_cli(
    engine: Engine, paths: list[Path], *, validate: bool, classify: Classifier | None = None
) -> int:
    """The ``sharedcare import`` command: a progress bar, then counts and errors; exit 1 on errors."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    total_files = len(discover(paths))
    with Progress(console=console) as bar:
        task = bar.add_task("Importing", total=total_files)

        def progress(name: str, count: int) -> None:
            bar.update(task, advance=1, description=f"{count} resources")

        report = import_paths(engine, paths, validate=validate, progress=progress, classify=classify)
    table = Table(title=f"Imported {report.total} resources from {report.files} files")
    table.add_column("Resource type")
    table.add_column("Count", justify="right")
    for rtype, count in sorted(report.counts.items()):
        table.add_row(rtype, str(count))
    console.print(table)
    if report.errors:
        console.print(f"[red]{len(report.errors)} errors[/red]")
        for line in report.errors[:50]:
            console.print(f"  {line}")
        return 1
    console.print("[green]No errors.[/green]")
    return 0
