"""The stand-in for `python:3.11-slim-bookworm` when Docker Hub cannot be reached: Debian's Python 3.11 in a
minimal root filesystem made by mmdebstrap from Debian packages, imported into the engine. The `essential`
variant (no apt: nothing in the images installs Debian packages) plus `passwd` for the Dockerfile's useradd and
libstdc++ for the native wheels (grpcio, onnxruntime), which the official image has as well.

The filesystem is cached as a tarball under the system temp dir, keyed by everything that goes into it (the
package list, the mmdebstrap options and the host's local CA certificates), so only the first run on a machine
pays for it (20 s to 2 min, mostly downloads and dpkg); CHARRNN_FRESH_CONTAINER_BASE=1 remakes it. An
imported image has no configuration, so the import sets PATH and LANG itself; the Dockerfile's
`ENV PATH=/opt/venv/bin:$PATH` builds on that PATH.

The image trusts what the host trusts: the certificates in the host's CA bundle that Debian's ca-certificates
package does not ship (locally added ones, such as an egress proxy's CA) are added with update-ca-certificates,
so pip inside a build verifies the package index the same way pip on the host does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from tests.containers.engine import Engine, EngineError

CACHE_ROOT = Path(tempfile.gettempdir()) / "charrnn-container-base"
STALE_AFTER_S = 7 * 24 * 3600
SUITE = "bookworm"
VARIANT = "essential"
PACKAGES = ("python3.11", "python3.11-venv", "python-is-python3", "ca-certificates", "passwd", "libstdc++6")
# Documentation and translations nothing in the images reads.
EXCLUDED_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_CERTS = Path("/usr/share/ca-certificates")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s+(.*?)\s+-----END CERTIFICATE-----", re.S)


def _pem_bodies(text: str) -> list[str]:
    """The base64 bodies of the PEM certificates in `text`, whitespace removed (a comparable identity)."""
    return ["".join(body.split()) for body in PEM.findall(text)]


def local_ca_certificates(bundle: Path = HOST_BUNDLE, shipped: Path = DEBIAN_CERTS) -> list[str]:
    """PEM certificates the host trusts beyond Debian's ca-certificates package, in bundle order."""
    if not bundle.exists():
        return []
    known = {body for crt in shipped.rglob("*.crt") for body in _pem_bodies(crt.read_text(errors="replace"))}
    extra = [body for body in _pem_bodies(bundle.read_text(errors="replace")) if body not in known]
    return [
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        + "\n-----END CERTIFICATE-----\n"
        for body in extra
    ]


def _mmdebstrap_args(cert_files: list[Path], out: Path) -> list[str]:
    args = ["mmdebstrap", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES)]
    args += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDED_PATHS]
    if cert_files:
        args += [
            f"--customize-hook=copy-in {' '.join(map(str, cert_files))} /usr/local/share/ca-certificates",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    return [*args, SUITE, str(out)]


def _key(certs: list[str]) -> str:
    digest = hashlib.sha256(repr((SUITE, VARIANT, PACKAGES, EXCLUDED_PATHS, IMAGE_ENV)).encode())
    for cert in certs:
        digest.update(cert.encode())
    return digest.hexdigest()[:16]


def _prune(keep: Path) -> None:
    for entry in CACHE_ROOT.glob("*.tar"):
        if entry != keep and time.time() - entry.stat().st_mtime > STALE_AFTER_S:
            entry.unlink(missing_ok=True)


def base_tarball(fresh: bool = False) -> Path:
    """The cached root filesystem tarball, made now if missing (one maker per key; others wait)."""
    fresh = fresh or os.environ.get("CHARRNN_FRESH_CONTAINER_BASE") == "1"
    certs = local_ca_certificates()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    key = _key(certs)
    tarball = CACHE_ROOT / f"{key}.tar"
    with open(CACHE_ROOT / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if fresh or not tarball.exists():
            with tempfile.TemporaryDirectory(prefix="charrnn-base-") as tmp:
                cert_files = [Path(tmp) / f"host-local-{i}.crt" for i in range(len(certs))]
                for path, cert in zip(cert_files, certs, strict=True):
                    path.write_text(cert)
                partial = CACHE_ROOT / f"{key}.partial.tar"  # mmdebstrap picks the format by extension
                args = _mmdebstrap_args(cert_files, partial)
                result = subprocess.run(args, capture_output=True, text=True, timeout=900)
                if result.returncode != 0:
                    raise EngineError(f"{shlex.join(args)} failed:\n{result.stderr[-3000:]}")
                partial.replace(tarball)
        tarball.touch()
        _prune(tarball)
    return tarball


def import_base(engine: Engine, fresh: bool = False) -> str:
    """Import the base filesystem into `engine` as an image; returns its reference."""
    tarball = base_tarball(fresh)
    reference = f"charrnn-test-base:{tarball.stem}"
    changes = [f"--change=ENV {env}" for env in IMAGE_ENV] + ['--change=CMD ["python3"]']
    engine.docker("import", *changes, str(tarball), reference, timeout=300)
    return reference
