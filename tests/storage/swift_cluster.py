"""A real OpenStack Swift cluster with its S3 API, started on loopback for the S3 store tests.

Swift (PyPI ``swift``) runs as several processes, as in production: three object servers (one
device each, in three zones, three replicas per object), a container server and an account
server, and a proxy whose pipeline carries ``s3api`` (the S3 protocol) and ``tempauth`` (one
test user), with Debian's ``memcached`` as its cache. The rings are built with
``swift-ring-builder``. Every port is below 32768 (outside Linux's ephemeral range), every file
under one folder that the caller provides (on a filesystem with user xattrs, which Swift's
object server needs).

Swift reads ``/etc/swift/swift.conf`` from a fixed path; rather than write there, each server
is started through this file (``python swift_cluster.py serve KIND CONF SWIFT_CONF``), which
points Swift at the cluster's own ``swift.conf`` before the server module loads.
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ACCESS_KEY = "test:tester"
"""The tempauth user (``account:user``), which is also the S3 access key."""
SECRET_KEY = "testing"
REGION = "us-east-1"  # s3api's default location
BUCKET = "sharedcare-content"
"""The bucket the S3 store tests use (created by the ``s3_client`` fixture)."""
OBJECT_NODES = 3
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth "
    "copy slo dlo proxy-logging proxy-server"
)
"""The proxy's middleware: s3api before tempauth (its S3 signatures), slo for multipart uploads."""
PART_POWER = 6


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says which part failed and why."""


@dataclass
class SwiftCluster:
    """A running cluster; ``stop`` ends every process it started."""

    root: Path
    endpoint: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        """The tail of every process's output, for a failure message."""
        parts = []
        for name in self.processes:
            path = self.root / "log" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name} ---\n{text[-2000:]}")
        return "\n".join(parts)


def _free_ports(count: int) -> list[int]:
    """``count`` ports in [20000, 32000) that are free now (the rings need them up front)."""
    ports: list[int] = []
    candidates = random.sample(range(20000, 32000), 400)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ClusterError("no free loopback ports below 32768")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ClusterError(f"{name} not found (pip install swift, the dev extra)")
    return found


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    # swift-ring-builder exits 1 for warnings (e.g. "balance too high" on tiny rings)
    if done.returncode not in (0, 1):
        raise ClusterError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")


def _build_ring(root: Path, kind: str, replicas: int, devices: list[tuple[int, int, str]]) -> None:
    builder = str(root / f"{kind}.builder")
    tool = _tool("swift-ring-builder")
    _run(tool, builder, "create", str(PART_POWER), str(replicas), "1")
    for zone, port, device in devices:
        _run(tool, builder, "add", f"r1z{zone}-127.0.0.1:{port}/{device}", "100")
    _run(tool, builder, "rebalance")
    if not (root / f"{kind}.ring.gz").exists():
        raise ClusterError(f"swift-ring-builder wrote no {kind} ring")


def _storage_conf(root: Path, kind: str, port: int, devices: Path) -> Path:
    path = root / "conf" / f"{kind}-{port}.conf"
    path.write_text(
        f"""[DEFAULT]
devices = {devices}
mount_check = false
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {getpass.getuser()}
swift_dir = {root}
log_name = {kind}-{port}
log_level = WARNING

[pipeline:main]
pipeline = healthcheck {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[filter:healthcheck]
use = egg:swift#healthcheck
"""
    )
    return path


def _proxy_conf(root: Path, port: int, memcached_port: int) -> Path:
    path = root / "conf" / "proxy.conf"
    path.write_text(
        f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {getpass.getuser()}
swift_dir = {root}
log_name = proxy
log_level = WARNING

[pipeline:main]
pipeline = {PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:s3api]
use = egg:swift#s3api
location = {REGION}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {SECRET_KEY} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""
    )
    return path


def start_cluster(root: Path, *, timeout: float = 90.0) -> SwiftCluster:
    """Build the rings and configuration under ``root``, start every process and wait until
    the proxy and each storage server answer; raise ClusterError (everything stopped) if not."""
    memcached = shutil.which("memcached")
    if not memcached:
        raise ClusterError("memcached not found (apt-get install memcached)")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("conf", "log"):
        (root / sub).mkdir(exist_ok=True)
    _check_xattrs(root)
    ports = _free_ports(OBJECT_NODES + 4)
    proxy_port, memcached_port, account_port, container_port, *object_ports = ports
    swift_conf = root / "swift.conf"
    swift_conf.write_text(
        "[swift-hash]\nswift_hash_path_suffix = sharedcare-tests\nswift_hash_path_prefix = sharedcare\n\n"
        "[storage-policy:0]\nname = three-replicas\ndefault = yes\n"
    )
    _build_ring(root, "account", 1, [(1, account_port, "a1")])
    _build_ring(root, "container", 1, [(1, container_port, "c1")])
    _build_ring(
        root, "object", OBJECT_NODES, [(i + 1, port, f"o{i + 1}") for i, port in enumerate(object_ports)]
    )
    servers: list[tuple[str, str, Path, int]] = [
        (
            "account",
            "account",
            _storage_conf(root, "account", account_port, _devices(root, "a1")),
            account_port,
        ),
        (
            "container",
            "container",
            _storage_conf(root, "container", container_port, _devices(root, "c1")),
            container_port,
        ),
    ]
    for i, port in enumerate(object_ports):
        device = f"o{i + 1}"
        servers.append(
            (f"object-{i + 1}", "object", _storage_conf(root, "object", port, _devices(root, device)), port)
        )
    servers.append(("proxy", "proxy", _proxy_conf(root, proxy_port, memcached_port), proxy_port))
    cluster = SwiftCluster(root=root, endpoint=f"http://127.0.0.1:{proxy_port}")
    try:
        cluster.processes["memcached"] = _spawn(
            root,
            "memcached",
            [
                memcached,
                "-l",
                "127.0.0.1",
                "-p",
                str(memcached_port),
                "-U",
                "0",
                "-m",
                "32",
                "-u",
                getpass.getuser(),
            ],
        )
        for name, kind, conf, _port in servers:
            command = [sys.executable, __file__, "serve", kind, str(conf), str(swift_conf)]
            cluster.processes[name] = _spawn(root, name, command)
        deadline = time.monotonic() + timeout
        for name, _kind, _conf, port in servers:
            _wait_healthy(cluster, name, port, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _devices(root: Path, device: str) -> Path:
    """A node's devices folder holding one device (a plain folder: mount_check is off)."""
    folder = root / "nodes" / device
    (folder / device).mkdir(parents=True, exist_ok=True)
    return folder


def _check_xattrs(root: Path) -> None:
    probe = root / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.sharedcare", b"1")
    except OSError as err:
        raise ClusterError(f"{root} has no user xattrs, which Swift needs: {err}") from err
    finally:
        probe.unlink()


def _spawn(root: Path, name: str, command: list[str]) -> subprocess.Popen[bytes]:
    log = (root / "log" / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def _wait_healthy(cluster: SwiftCluster, name: str, port: int, deadline: float) -> None:
    proc = cluster.processes[name]
    while True:
        if proc.poll() is not None:
            raise ClusterError(f"Swift {name} exited with {proc.returncode}:\n{cluster.logs()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"Swift {name} did not answer on port {port}:\n{cluster.logs()}")
        time.sleep(0.1)


def _serve(kind: str, conf: str, swift_conf: str) -> None:
    """Run one Swift server in this process, on the cluster's own swift.conf."""
    import importlib

    from swift.common import utils

    utils.SWIFT_CONF_FILE = swift_conf
    from swift.common import constraints, storage_policy

    constraints.reload_constraints()
    storage_policy.reload_storage_policies()
    module = {"proxy": "swift.proxy.server", "object": "swift.obj.server"}.get(kind, f"swift.{kind}.server")
    sys.argv = [f"swift-{kind}-server", conf]
    importlib.import_module(module).main()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: swift_cluster.py serve KIND CONF SWIFT_CONF")
