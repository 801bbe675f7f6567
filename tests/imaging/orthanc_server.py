"""A real Orthanc with its DICOMweb plugin, started by the tests, and the DICOM they store in it.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages are installed by ``.ci/run``; the Debian
service is not used: each test session starts its own ``Orthanc`` process from a JSON
configuration in a temporary folder (its own storage and index, loopback only, HTTP basic
authentication with a user the application is configured with), waits until ``/system``
answers, and kills it at the end. The instances are built with pydicom (small CT and MR images
with real pixel data) and uploaded through Orthanc's REST API (``POST /instances``).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ORTHANC_USER = "sharedcare"
DICOMWEB_PACKAGE = "orthanc-dicomweb"
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
START_SECONDS = 30

UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""pydicom's UID root: the test studies' UIDs are fixed under it."""


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or the server did not start."""


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if found is None:
        raise OrthancUnavailable("the Orthanc server is not installed (Debian package 'orthanc')")
    return found


def dicomweb_plugin() -> str:
    """The DICOMweb plugin's shared library, as the Debian package lists it."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DICOMWEB_PACKAGE], capture_output=True, text=True, check=True, timeout=30
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        raise OrthancUnavailable(f"the Debian package {DICOMWEB_PACKAGE!r} is not installed: {exc}") from None
    libraries = [line for line in listing if Path(line).name.startswith(DICOMWEB_PLUGIN)]
    if not libraries:
        raise OrthancUnavailable(f"no {DICOMWEB_PLUGIN} in the package {DICOMWEB_PACKAGE!r}")
    return sorted(libraries, key=lambda p: (not p.endswith(".so"), p))[0]


def free_port(low: int = 20000, high: int = 32767) -> int:
    """A free TCP port on the loopback below 32768 (outside the kernel's ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OrthancUnavailable("no free port below 32768")


@dataclass
class OrthancServer:
    """One Orthanc process; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    folder: Path
    password: str = field(default_factory=lambda: os.urandom(12).hex())
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (ORTHANC_USER, self.password)

    def config(self) -> dict[str, object]:
        return {
            "Name": "SharedCareTestPACS",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "SHAREDCARE",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {ORTHANC_USER: self.password},
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self) -> None:
        binary = orthanc_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [binary, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancUnavailable(f"Orthanc exited at start-up: {self.log_tail()}")
            try:
                resp = httpx.get(f"{self.url}/system", auth=self.auth, timeout=2)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise OrthancUnavailable(
            f"Orthanc did not answer /system within {START_SECONDS} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "orthanc.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop this server's own process (by its pid), killing it if it does not exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def upload(self, dicom: bytes) -> dict[str, str]:
        resp = httpx.post(
            f"{self.url}/instances",
            content=dicom,
            headers={"Content-Type": "application/dicom"},
            auth=self.auth,
            timeout=30,
        )
        resp.raise_for_status()
        answer: dict[str, str] = resp.json()
        return answer


# -- the test studies ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSpec:
    uid: str
    number: int
    modality: str
    description: str
    instances: tuple[str, ...]


@dataclass(frozen=True)
class StudySpec:
    uid: str
    patient_id: str
    patient_name: str
    description: str
    series: tuple[SeriesSpec, ...]


def _series(study: int, number: int, modality: str, description: str, count: int) -> SeriesSpec:
    uid = f"{UID_ROOT}{study}.{number}"
    return SeriesSpec(uid, number, modality, description, tuple(f"{uid}.{i}" for i in range(1, count + 1)))


CT_MR_STUDY = StudySpec(
    uid=f"{UID_ROOT}7001",
    patient_id="1980041200077",
    patient_name="MULLER^MARIE",
    description="CT and MR of the head",
    series=(
        _series(7001, 1, "CT", "Head without contrast", 3),
        _series(7001, 2, "MR", "Brain T1", 2),
    ),
)
OTHER_STUDY = StudySpec(
    uid=f"{UID_ROOT}7002",
    patient_id="1975093000012",
    patient_name="SCHMIT^PAUL",
    description="Another patient's CT",
    series=(_series(7002, 1, "CT", "Chest", 1),),
)
STUDIES = (CT_MR_STUDY, OTHER_STUDY)

_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
SIZE = 32


def pixels(seed: int) -> bytes:
    """A 12-bit gradient with a bright square: real pixel data that renders to a visible image."""
    values = []
    for y in range(SIZE):
        for x in range(SIZE):
            value = (x + y) * 40 + seed * 50
            if 8 <= x < 16 and 8 <= y < 16:
                value = 4000
            values.append(min(value, 4095))
    return struct.pack(f"<{len(values)}H", *values)


def instance(study: StudySpec, series: SeriesSpec, index: int) -> bytes:
    """One DICOM Part 10 file of ``series`` (instance number ``index + 1``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_uid = series.instances[index]
    sop_class = _SOP_CLASSES[series.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.StudyInstanceUID = study.uid
    ds.StudyDescription = study.description
    ds.StudyDate = "20260301"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + study.uid.rsplit(".", 1)[1]
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.Modality = series.modality
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = SIZE
    ds.Columns = SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels(index)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def load_studies(server: OrthancServer, studies: tuple[StudySpec, ...] = STUDIES) -> None:
    """Upload every instance of ``studies`` through Orthanc's REST API."""
    for study in studies:
        for series in study.series:
            for index in range(len(series.instances)):
                server.upload(instance(study, series, index))
