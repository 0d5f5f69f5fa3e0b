"""Hot reload: a new artifact is served to new streams while live streams finish on the model they
started on; the old model's tokens work until it retires, then are foreign; refused artifacts leave the
serving model in place; SIGHUP triggers it in `charrnn serve`."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import grpc
import pytest

from charrnn.client import CharRNNError, Client
from tests.service.harness import ServerProcess, ServerThread, make_config, wait_until

PROMPT = "import os\n"


def _install(src: Path, dst: Path) -> None:
    """Replace the artifact in `dst` (graph first, then the manifest that names its hash)."""
    shutil.copyfile(src / "model.onnx", dst / "model.onnx")
    shutil.copyfile(src / "manifest.json", dst / "manifest.json")


def _reloads(srv: ServerThread, result: str) -> float | None:
    assert srv.server is not None
    return srv.server.metrics.registry.get_sample_value(
        "charrnn_model_reloads_total", {"model": "model", "result": result}
    )


def test_reload_keeps_live_streams_on_their_model(artifacts: dict[str, Path], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(artifacts["lstm"], model_dir)
    n = 60000
    with ServerThread(make_config(model_dir, max_request_chars=n)) as srv, Client(srv.target, timeout=60) as c:
        assert srv.server is not None
        old_sha = c.info().sha256
        expected = c.generate(PROMPT, max_chars=n, seed=4).text()
        live = c.generate(PROMPT, max_chars=n, seed=4, checkpoint_every_chars=64)
        head = next(live)
        while live.checkpoint is None:
            head += next(live)
        assert srv.live == 1
        _install(artifacts["lstm_other"], model_dir)
        assert srv.call(srv.server.reload()) == {"model": "loaded"}
        assert len(srv.server.runtime.models) == 2, "the old model retired while its stream was live"
        new_sha = c.info().sha256
        assert new_sha != old_sha
        assert c.generate(PROMPT, max_chars=300, seed=4).text() != expected[:300]  # new streams: new model
        assert live.checkpoint is not None  # the old model still continues its own tokens while it retires
        cp = live.checkpoint
        assert c.generate(max_chars=100, resume_token=cp.resume_token).text() == expected[cp.chars : cp.chars + 100]
        assert head + live.text() == expected  # the live stream finished on the model it started on
        assert live.result is not None
        assert wait_until(lambda: len(srv.server.runtime.models) == 1)
        with pytest.raises(CharRNNError) as err:
            c.generate(max_chars=5, resume_token=live.result.resume_token).text()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert _reloads(srv, "loaded") == 1
        registry = srv.server.metrics.registry
        shas = {s.labels["sha256"] for m in registry.collect() if m.name == "charrnn_model_info" for s in m.samples}
        assert shas == {new_sha}


def test_refused_artifacts_leave_the_old_model_serving(artifacts: dict[str, Path], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(artifacts["lstm"], model_dir)
    with ServerThread(make_config(model_dir)) as srv, Client(srv.target, timeout=30) as c:
        assert srv.server is not None
        sha = c.info().sha256
        assert srv.call(srv.server.reload()) == {"model": "unchanged"}
        with open(model_dir / "model.onnx", "r+b") as f:  # bad hash
            f.seek(200)
            f.write(b"\xff\xfe\xfd")
        assert srv.call(srv.server.reload()) == {"model": "refused"}
        _install(artifacts["lstm_other"], model_dir)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest["model"]["hidden_size"] += 8  # bad shapes: the graph's states don't fit the manifest
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
        assert srv.call(srv.server.reload()) == {"model": "refused"}
        (model_dir / "manifest.json").unlink()  # unreadable
        assert srv.call(srv.server.reload()) == {"model": "refused"}
        assert c.info().sha256 == sha and len(c.generate(PROMPT, max_chars=50, seed=1).text()) == 50
        assert (_reloads(srv, "refused"), _reloads(srv, "unchanged"), _reloads(srv, "loaded")) == (3, 1, 0)


def test_sighup_reloads_charrnn_serve(artifacts: dict[str, Path], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(artifacts["lstm"], model_dir)
    proc = ServerProcess(model_dir, tmp_path).wait_ready()
    try:
        with Client(proc.target, timeout=30) as c:
            old = c.info().sha256
            _install(artifacts["lstm_other"], model_dir)
            proc.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: c.info().sha256 != old, 30), proc.output()
            assert len(c.generate(PROMPT, max_chars=20).text()) == 20
    finally:
        assert proc.stop() == 0
