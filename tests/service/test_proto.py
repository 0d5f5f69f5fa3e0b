"""The API definition: generated code is fresh, every field is commented, enums start at UNSPECIFIED."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from charrnn.v1 import charrnn_pb2
from tests.test_locks import read_lock

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto" / "charrnn" / "v1"


# What the generator stamps with its own version: grpcio-tools' GRPC_GENERATED_VERSION, and the protobuf
# gencode version in a comment and in the runtime check. The rest must not depend on the generator's version.
VERSION_STAMPS = re.compile(
    rb"GRPC_GENERATED_VERSION = '[^']*'|Protobuf Python Version: \S+|"
    rb"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"
)


def unstamped(code: bytes) -> bytes:
    return VERSION_STAMPS.sub(rb"<version>\1", code)


def generated_stamps() -> tuple[Version, Version]:
    """(grpcio-tools version, protobuf gencode version) as the committed generated code records them."""
    grpc_code = (REPO / "charrnn" / "v1" / "charrnn_pb2_grpc.py").read_text()
    pb2_code = (REPO / "charrnn" / "v1" / "charrnn_pb2.py").read_text()
    grpc_stamp = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_code)
    pb2_stamp = re.search(r"Protobuf Python Version: (\S+)", pb2_code)
    assert grpc_stamp and pb2_stamp
    return Version(grpc_stamp.group(1)), Version(pb2_stamp.group(1))


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerate with the command in scripts/gen_proto.sh into a temp tree and compare byte for byte, but for
    the generator's version stamps (so that `make test-latest`, on a newer grpcio-tools, still checks the
    code); the stamps are checked against the lock below."""
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    script = (REPO / "scripts" / "gen_proto.sh").read_text()
    assert "grpc_tools.protoc" in script
    env_path = str(Path(sys.executable).parent)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", "--python_out=.", "--grpc_python_out=.",
           "--mypy_out=.", *(str(p.relative_to(REPO)) for p in sorted(PROTO_DIR.glob("*.proto")))]  # fmt: skip
    subprocess.run(cmd, cwd=tmp_path, check=True, env={"PATH": f"{env_path}:/usr/bin:/bin"})
    generated = sorted(p for p in (tmp_path / "charrnn" / "v1").iterdir() if p.is_file())
    assert generated, "protoc produced nothing"
    for path in generated:
        committed = REPO / "charrnn" / "v1" / path.name
        assert committed.exists(), f"{committed} is missing: run make proto"
        assert unstamped(committed.read_bytes()) == unstamped(path.read_bytes()), f"{committed} is stale: make proto"


def test_the_generated_code_was_made_by_the_locked_generator() -> None:
    """The stamps are the locked grpcio-tools', so `make proto` in a locked environment reproduces the files
    byte for byte (the freshness test above leaves the stamps out)."""
    grpc_stamp, _ = generated_stamps()
    locked = {e.name: e.version for e in read_lock(REPO / "locks" / "dev.txt")}
    assert grpc_stamp == locked["grpcio-tools"], f"stubs made by grpcio-tools {grpc_stamp}: run make proto"


def test_every_version_pyproject_allows_passes_the_stubs_runtime_checks() -> None:
    """The stubs refuse a grpcio older than their generator and a protobuf older than their gencode (or of
    another major version): pyproject.toml's ranges must exclude exactly those."""
    grpc_stamp, gencode = generated_stamps()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("client", "serve"):
        for line in project[extra]:
            requirement = Requirement(line)
            if requirement.name == "grpcio":
                assert requirement.specifier.contains(grpc_stamp)
                assert all(not requirement.specifier.contains(v) for v in lower_versions(grpc_stamp)), line
            if requirement.name == "protobuf":
                assert requirement.specifier.contains(gencode)
                below = [*lower_versions(gencode), Version(f"{gencode.major + 1}.0.0")]
                assert all(not requirement.specifier.contains(v) for v in below), line


def lower_versions(v: Version) -> list[Version]:
    """Versions just below `v` (the previous patch, minor and major releases)."""
    major, minor, micro = v.release[:3]
    candidates = [(major, minor, micro - 1), (major, minor - 1, 99), (major - 1, 99, 99)]
    return [Version(".".join(map(str, c))) for c in candidates if min(c) >= 0]


@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["lowest-direct", "locked"])
def test_the_stubs_import_with_the_lowest_allowed_and_the_locked_versions(resolution: str, tmp_path: Path) -> None:
    """A real environment per case (uv, from the package index): the client's requirements at the lowest
    versions pyproject.toml allows, and at the locked ones; the stubs and the health-check stubs import."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed next to this interpreter (make install)")
    venv = tmp_path / "venv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120)
    install = [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    if resolution == "locked":
        install += ["--require-hashes", "--no-deps", "-r", str(REPO / "locks" / "client.txt")]
    else:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        install += [
            "--resolution",
            "lowest-direct",
            *project["dependencies"],
            *project["optional-dependencies"]["client"],
        ]
    subprocess.run(install, check=True, timeout=600, capture_output=True)
    code = "import grpc, google.protobuf as p, charrnn.v1.charrnn_pb2_grpc, grpc_health.v1.health_pb2_grpc; "
    code += "print(grpc.__version__, p.__version__)"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    grpc_version, protobuf_version = map(Version, done.stdout.split())
    if resolution == "lowest-direct":
        grpc_stamp, gencode = generated_stamps()
        assert (grpc_version, protobuf_version) == (grpc_stamp, gencode), "the lower bounds are the stamps"


def test_every_field_and_value_is_commented() -> None:
    field = re.compile(r"^\s*(optional |repeated )?[\w.]+ \w+ = \d+;|^\s*[A-Z_0-9]+ = \d+;")
    for proto in PROTO_DIR.glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if field.match(line):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} has no comment: {line.strip()}"


def test_enums_start_unspecified_and_service_shape() -> None:
    for enum in charrnn_pb2.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
    service = charrnn_pb2.DESCRIPTOR.services_by_name["CharRNN"]
    assert service.full_name == "charrnn.v1.CharRNN"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "Generate": (False, True),
        "Session": (True, True),
        "Score": (False, False),
        "GetModelInfo": (False, False),
        "ListModels": (False, False),
    }
