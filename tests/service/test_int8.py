"""int8 artifacts in the server: batch invariance (and why per-row scales are needed), seeded streams
alone vs batched through a real server, resume tokens across precisions, and the serve-only install."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from charrnn.artifact import load_manifest
from charrnn.client import CharRNNError, Client
from charrnn.engine import Engine, EngineOptions
from tests.conftest import REPO_ROOT, make_text
from tests.service.harness import ServerThread, generate_together, make_config
from training.config import QualityGate
from training.quantize import quantize_artifact

DEFAULT_MODEL = REPO_ROOT / "models" / "default"
BATCHES = (1, 2, 3, 7, 16, 17, 63, 64, 65, 128, 255, 256)
PROBES = (0, 1, 62, 255)  # rows compared alone and inside every batch that holds them
DEPLOY_THREADS = 2  # the documented alternative to the default 1 (`--intra-op-threads 2`)


@pytest.fixture(scope="module")
def int8_dirs(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """int8 artifacts of the tiny random-weight models (scored on a code-like text) and of the shipped model:
    their quality is not the point here (tests/training/test_quantize.py's), so the gate only warns."""
    root = tmp_path_factory.mktemp("int8")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    loose = QualityGate(allow_loss_increase=True, corpus=str(corpus))
    dirs = {name: root / name for name in ("lstm", "gru", "rnn")}
    for name, out in dirs.items():
        quantize_artifact(artifacts[name], out, loose)
    dirs["default"] = root / "default"
    quantize_artifact(DEFAULT_MODEL, dirs["default"], QualityGate(allow_loss_increase=True, val_chars=5000))
    return dirs


def _alone_vs_batched(engine: Engine, steps: int) -> list[str]:
    """Each probe row run alone, then inside every batch size that holds it: the mismatches."""
    rng = np.random.default_rng(steps)
    tokens = rng.integers(0, engine.vocab_size, (max(BATCHES), steps))
    states = tuple((rng.standard_normal(s.shape) * 0.5).astype(np.float32) for s in engine.zero_states(max(BATCHES)))
    alone = {i: engine.run(tokens[i : i + 1], tuple(s[:, i : i + 1] for s in states)) for i in PROBES}
    mismatches = []
    for batch in BATCHES:
        logits, new_states = engine.run(tokens[:batch], tuple(s[:, :batch] for s in states))
        for i in (p for p in PROBES if p < batch):
            one_logits, one_states = alone[i]
            same = np.array_equal(one_logits[0], logits[i]) and all(
                np.array_equal(a[:, 0], b[:, i]) for a, b in zip(one_states, new_states, strict=True)
            )
            if not same:
                mismatches.append(f"row {i} in batch {batch}, T={steps}")
    return mismatches


@pytest.mark.parametrize("threads", [1, DEPLOY_THREADS])
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "default"])
def test_int8_rows_are_bit_identical_alone_and_in_any_batch(
    int8_dirs: dict[str, Path], name: str, threads: int
) -> None:
    engine = Engine(int8_dirs[name], EngineOptions(intra_op_threads=threads))
    assert engine.manifest.precision == "int8"
    assert _alone_vs_batched(engine, 1) == []  # decode
    assert _alone_vs_batched(engine, 9) == []  # prefill


def test_per_tensor_quantization_is_not_batch_invariant(tmp_path: Path) -> None:
    """ONNX Runtime's own dynamic quantization of the same model: one activation scale per batch, so
    a row's logits move with the rows beside it. This is why the int8 graph scales each row."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = load_manifest(DEFAULT_MODEL)
    quantize_dynamic(str(DEFAULT_MODEL / "model.onnx"), str(tmp_path / "tensor.onnx"), weight_type=QuantType.QInt8)
    spec = dataclasses.replace(manifest, onnx=dataclasses.replace(manifest.onnx, file="tensor.onnx"))
    per_tensor = Engine(tmp_path, manifest=spec)
    assert "row 1 in batch 64, T=1" in _alone_vs_batched(per_tensor, 1)
    assert _alone_vs_batched(Engine(DEFAULT_MODEL), 1) == []  # the fp32 graph it came from is invariant


def test_seeded_stream_alone_equals_batched_through_the_server(int8_dirs: dict[str, Path]) -> None:
    config = make_config(int8_dirs["lstm"], intra_op_threads=DEPLOY_THREADS)
    requests = [
        {"prompt": f"def f{i}(x):" if i else "import os\n", "max_chars": 200, "seed": 70 + i, "temperature": 1.0}
        for i in range(16)
    ]
    with ServerThread(config) as server, Client(server.target) as client:
        alone = client.generate(**requests[0]).text()  # type: ignore[arg-type]
        together, widest = generate_together(client, requests, server)
    assert widest > 4, "the streams really shared batches: one model call stepped many rows"
    assert len(alone) == 200 and together[0][0] == alone


def test_resume_tokens_do_not_cross_between_fp32_and_int8(
    artifacts: dict[str, Path], int8_dirs: dict[str, Path]
) -> None:
    """Same weights, different arithmetic: a state from one is not a state of the other. Each server
    says which it serves, in GetModelInfo and in the model-info metric."""
    with (
        ServerThread(make_config(artifacts["lstm"])) as fp32,
        ServerThread(make_config(int8_dirs["lstm"])) as int8,
        Client(fp32.target) as fp32_client,
        Client(int8.target) as int8_client,
    ):
        assert (fp32_client.info().precision, int8_client.info().precision) == ("fp32", "int8")
        for server, precision in ((fp32, "fp32"), (int8, "int8")):
            assert server.server is not None
            info = [s.labels for m in server.server.metrics.registry.collect() if m.name == "charrnn_model_info"
                    for s in m.samples]  # fmt: skip
            assert [labels["precision"] for labels in info] == [precision]
        for source, other in ((fp32_client, int8_client), (int8_client, fp32_client)):
            gen = source.generate("def ", max_chars=10, seed=3)
            gen.text()
            assert gen.result is not None
            token = gen.result.resume_token
            assert len(source.generate(max_chars=5, resume_token=token).text()) == 5  # its own server continues
            with pytest.raises(CharRNNError) as err:
                other.generate(max_chars=5, resume_token=token).text()
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_int8_artifact_runs_without_the_onnx_package_or_torch(int8_dirs: dict[str, Path]) -> None:
    """The serving environment has onnxruntime but neither `onnx` nor torch."""
    script = (
        "import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from charrnn.engine import Engine\n"
        f"e = Engine({str(int8_dirs['default'])!r})\n"
        "logits, states = e.run(np.zeros((3, 4), np.int64), e.zero_states(3))\n"
        "print(e.manifest.precision, logits.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["int8", "(3,", "4,", "164)"]
