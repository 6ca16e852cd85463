"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests, kept on loopback.

Started with a temporary JSON configuration and storage on free ports, HTTP basic auth on,
``RemoteAccessAllowed: false`` (Orthanc 1.10 has no bind-address setting and listens on every interface: the HTTP
server refuses every client that is not loopback) and its DICOM server off (nothing listens on a DICOM port; the
tests talk DIMSE to the node's own SCP, with Orthanc as a client only). :meth:`Orthanc.check_closed` proves both
from a non-loopback address of this machine. Stopped (and its storage deleted) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "node", "s3cret-test-password"


def available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed; otherwise why not."""
    if not Path(BINARY).exists():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not Path(PLUGIN).exists():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            address = None
    if address and not address.startswith("127."):
        return address
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


class Orthanc:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="orthanc-"))
        self.http_port = free_port()
        self.config_path = self.folder / "orthanc.json"
        self.process: subprocess.Popen | None = None
        self.auth = (USER, PASSWORD)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        storage = self.folder / "storage"
        return {
            "Name": "robust-student-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "Plugins": [PLUGIN], "HttpPort": self.http_port, "HttpServerEnabled": True,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "HttpDescribeErrors": True, "StableAge": 1, "OverwriteInstances": False, "ConcurrentJobs": 1,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }

    def start(self, timeout: float = 60.0) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([BINARY, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- REST helpers (the tests' own view of the archive, not the node's code) -------------------------------
    def upload(self, data: bytes) -> dict:
        response = requests.post(f"{self.url}/instances", data=data, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[str]:
        return requests.get(f"{self.url}/instances", auth=self.auth, timeout=30).json()

    def tags(self, orthanc_id: str) -> dict:
        return requests.get(f"{self.url}/instances/{orthanc_id}/simplified-tags", auth=self.auth, timeout=30).json()

    def file(self, orthanc_id: str) -> bytes:
        response = requests.get(f"{self.url}/instances/{orthanc_id}/file", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.content

    def listening_ports(self) -> set[int]:
        """The TCP ports the Orthanc process listens on (from /proc: its socket inodes in LISTEN state)."""
        assert self.process is not None
        inodes = set()
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if not Path(table).exists():
                continue
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def check_closed(self) -> str:
        """Assert that Orthanc cannot be used from a non-loopback address; returns what was checked."""
        assert requests.get(f"{self.url}/system", timeout=5).status_code == 401  # auth is on
        assert requests.get(f"{self.url}/system", auth=self.auth, timeout=5).status_code == 200
        address = non_loopback_address()
        if address is None:
            ports = self.listening_ports()
            assert ports == {self.http_port}, f"Orthanc listens on {sorted(ports)}"
            return "no non-loopback address on this machine: only loopback exists"
        try:
            response = requests.get(f"http://{address}:{self.http_port}/system", auth=self.auth, timeout=5)
            status = response.status_code
        except requests.ConnectionError:
            status = None
        # Orthanc answers a remote client 401 even with valid credentials when RemoteAccessAllowed is false
        assert status in (None, 401, 403), f"Orthanc answered {status} on {address}: reachable from the network"
        ports = self.listening_ports()
        assert ports == {self.http_port}, f"Orthanc listens on {sorted(ports)}, expected only {self.http_port}"
        return (f"HTTP on {address}:{self.http_port} with valid credentials: "
                f"{'refused' if status is None else status}; listening on {sorted(ports)} only (DICOM server off)")
