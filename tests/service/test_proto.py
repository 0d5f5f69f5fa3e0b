"""The API definition: generated code is fresh, every field is commented, enums start at UNSPECIFIED."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from charrnn.v1 import charrnn_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto" / "charrnn" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerate with the command in scripts/gen_proto.sh into a temp tree and compare byte for byte."""
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
        assert committed.exists(), f"{committed} is missing: run scripts/gen_proto.sh"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run scripts/gen_proto.sh"


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
    }
