"""Several models, one server: the model repository (real server on port 0, real ONNX Runtime).

The repository holds two tiny models of different shapes and vocabularies: `default` (LSTM, 2x24, `replace`)
and `small` (GRU, 1x16, `refuse`, no unknown character), so a row of one could never run in the other's
model call, and a text one accepts the other may refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import pytest

from charrnn.artifact import ArtifactError
from charrnn.client import CharRNNError, Client
from service.config import ConfigError
from service.repository import Repository, choose_default, model_serving
from tests.observability.scrape import series, value
from tests.service.harness import (
    REPO,
    EngineReports,
    ServerProcess,
    ServerThread,
    charrnn_cmd,
    make_config,
    wait_until,
)

PROMPT = "def f(x):\n"
SEEDS = (1, 2, 3)
CHARS = 120


@pytest.fixture
def repo(artifacts: dict[str, Path], tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(artifacts["lstm"], root / "default")
    shutil.copytree(artifacts["gru_small"], root / "small")
    return root


def _code(exc: pytest.ExceptionInfo[CharRNNError]) -> grpc.StatusCode:
    return exc.value.code


def _alone(model_dir: Path) -> dict[int, str]:
    """Each seed's text from a server of this one model."""
    with ServerThread(make_config(model_dir)) as srv, Client(srv.target, timeout=60) as c:
        return {seed: c.generate(PROMPT, max_chars=CHARS, seed=seed).text() for seed in SEEDS}


def test_each_models_streams_read_as_on_a_server_of_that_model_alone(repo: Path) -> None:
    expected = {name: _alone(repo / name) for name in ("default", "small")}
    requests = [
        {"prompt": PROMPT, "max_chars": CHARS, "seed": seed, "model": name} for seed in SEEDS for name in expected
    ]
    texts: list[str] = [""] * len(requests)
    barrier = threading.Barrier(len(requests))
    with ServerThread(make_config(None, model_repository=repo)) as srv, Client(srv.target, timeout=60) as c:

        def run(i: int) -> None:
            barrier.wait()
            texts[i] = c.generate(**requests[i]).text()  # type: ignore[arg-type]

        with EngineReports(srv) as calls:  # the default model's engines: only its own rows, batched together
            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert calls.widest_step() > 1, "the default model's streams never shared a decode step"
    assert texts == [expected[str(r["model"])][int(str(r["seed"]))] for r in requests]


def test_models_are_listed_and_described_by_name_and_unknown_names_are_not_found(repo: Path) -> None:
    with ServerThread(make_config(None, model_repository=repo)) as srv, Client(srv.target, timeout=30) as c:
        listed = c.list_models()
        assert [(m.served_name, m.default) for m in listed] == [("default", True), ("small", False)]
        assert (c.info().served_name, c.info("small").hidden_size, c.info("small").cell) == ("default", 16, "gru")
        assert c.info("default").hidden_size == 24
        for call in (
            lambda name: c.info(name),
            lambda name: c.generate(PROMPT, max_chars=5, model=name).text(),
            lambda name: c.score(PROMPT, model=name),
        ):
            with pytest.raises(CharRNNError) as err:
                call("n" * 10_000)
            assert _code(err) == grpc.StatusCode.NOT_FOUND
            assert err.value.details.endswith("is not served here; served: default, small")
            assert len(err.value.details) < 200, "the client's name is quoted in part, never whole"
        with c.session(model="nope") as session, pytest.raises(CharRNNError) as err:
            session.feed(PROMPT)
        assert _code(err) == grpc.StatusCode.NOT_FOUND and "served: default, small" in err.value.details
        assert not [s for s in series(srv.registry, "charrnn_streams_finished_total") if s["model"] == "nope"]


def test_a_token_is_refused_on_another_model_and_continues_on_its_own_without_a_name(repo: Path) -> None:
    shutil.copytree(repo / "default", repo / "twin")  # the same file under another name: still another model
    with ServerThread(make_config(None, model_repository=repo)) as srv, Client(srv.target, timeout=30) as c:
        whole = c.generate(PROMPT, max_chars=80, seed=5, model="small").text()
        head = c.generate(PROMPT, max_chars=30, seed=5, model="small")
        head_text = head.text()
        assert head.result is not None
        token = head.result.resume_token
        for other in ("default", "twin"):
            with pytest.raises(CharRNNError) as err:
                c.generate(max_chars=5, resume_token=token, model=other).text()
            assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION and "'small'" in err.value.details
            with pytest.raises(CharRNNError) as err:
                c.score("x = 1\n", resume_token=token, model=other)
            assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION
        with c.session(model="default") as session, pytest.raises(CharRNNError) as err:
            session.load(resume_token=token)
        assert _code(err) == grpc.StatusCode.FAILED_PRECONDITION
        assert head_text + c.generate(max_chars=50, resume_token=token).text() == whole  # no name: its own model
        assert head_text + c.generate(max_chars=50, resume_token=token, model="small").text() == whole
        with c.session(model="small") as session:
            session.load(resume_token=token)
            assert head_text + session.generate(max_chars=50).text() == whole


def test_limits_are_per_model_from_serving_json(repo: Path, tmp_path: Path) -> None:
    (repo / "small" / "serving.json").write_text(json.dumps({"max_request_chars": 50, "default_max_chars": 20}))
    with ServerThread(make_config(None, model_repository=repo)) as srv, Client(srv.target, timeout=30) as c:
        assert c.info("small").limits["max_chars"] == 50 and c.info("default").limits["max_chars"] == 20000
        assert len(c.generate(PROMPT, seed=1, model="small").text()) == 20
        with pytest.raises(CharRNNError) as err:
            c.generate(PROMPT, max_chars=51, model="small").text()
        assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT and "limit of 50" in err.value.details
        assert len(c.generate(PROMPT, max_chars=51, seed=1).text()) == 51


def test_a_models_engine_count_comes_from_serving_json_and_a_change_reloads_it(repo: Path) -> None:
    (repo / "small" / "serving.json").write_text(json.dumps({"engines": 1}))
    with ServerThread(make_config(None, model_repository=repo, engines=2)) as srv, Client(srv.target) as c:
        assert srv.server is not None
        models = srv.server.runtime.models
        pids = {name: models.get(name).scheduler.pids() for name in ("default", "small")}
        assert (len(pids["default"]), len(pids["small"])) == (2, 1), pids
        assert os.getpid() not in pids["default"] + pids["small"], "an engine is not a process of its own"
        assert len(c.generate(PROMPT, max_chars=30, seed=1, model="small").text()) == 30
        (repo / "small" / "serving.json").write_text(json.dumps({"engines": 2}))
        assert srv.call(srv.server.reload()) == {"default": "unchanged", "small": "loaded"}
        assert (
            len(models.get("small").scheduler.pids()) == 2 and models.get("default").scheduler.pids() == pids["default"]
        )
        assert len(c.generate(PROMPT, max_chars=30, seed=1, model="small").text()) == 30


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[1]", "must hold a JSON object"),
        ('{"max_sessions": 3}', "'max_sessions' is not a per-model setting"),
        ('{"engines": 0}', "engines must be an integer >= 1"),
        ('{"max_live_streams": 0}', "max_live_streams must be an integer >= 1"),
        ('{"max_prompt_chars": "8"}', "max_prompt_chars must be an integer"),
        ('{"default_max_chars": 30000}', "default_max_chars 30000 exceeds max_request_chars 20000"),
        ("{", "is not valid JSON"),
    ],
)
def test_a_bad_serving_json_is_one_line_naming_the_file(repo: Path, content: str, words: str) -> None:
    from service.config import Limits

    (repo / "small" / "serving.json").write_text(content)
    with pytest.raises(ArtifactError) as err:
        model_serving(repo / "small", Limits(), engines=2)
    message = str(err.value)
    assert "serving.json" in message and words in message and "\n" not in message, message


def test_names_come_from_folders_and_the_default_is_chosen_or_refused(repo: Path, tmp_path: Path) -> None:
    assert list(Repository(repo).scan()) == ["default", "small"]
    assert list(Repository(repo / "small", single=True).scan()) == ["small"]
    assert choose_default(["small"], None) == "small" and choose_default(["a", "default"], None) == "default"
    assert choose_default(["a", "b"], "b") == "b"
    with pytest.raises(ConfigError, match="2 models and none is named 'default': pass --default-model"):
        choose_default(["a", "b"], None)
    with pytest.raises(ConfigError, match=r"--default-model 'c' is not in the repository \(models: a, b\)"):
        choose_default(["a", "b"], "c")
    shutil.copytree(repo / "small", repo / "Small")
    with pytest.raises(ConfigError, match="both claim the model name"):
        Repository(repo).scan()
    shutil.rmtree(repo / "Small")
    shutil.copytree(repo / "small", repo / "bad name")
    with pytest.raises(ConfigError, match="cannot be a model name"):
        Repository(repo).scan()
    with pytest.raises(ConfigError, match="not both"):
        make_config(repo / "small", model_repository=repo).models()


def test_a_rescan_adds_retires_and_reloads_folders_and_leaves_the_others_alone(
    repo: Path, artifacts: dict[str, Path]
) -> None:
    n = 20000
    config = make_config(None, model_repository=repo, max_request_chars=n)
    with ServerThread(config) as srv, Client(srv.target, timeout=60) as c:
        assert srv.server is not None
        models = srv.server.runtime.models
        expected = c.generate(PROMPT, max_chars=n, seed=4, model="small").text()
        live = c.generate(PROMPT, max_chars=n, seed=4, model="small")
        head = next(live)
        untouched = models.get("default")
        shutil.rmtree(repo / "small")
        shutil.copytree(artifacts["rnn"], repo / "third")
        assert srv.call(srv.server.reload()) == {"default": "unchanged", "small": "removed", "third": "added"}
        assert models.get("default") is untouched, "an unchanged model was reloaded"
        with pytest.raises(CharRNNError) as err:
            c.generate(PROMPT, max_chars=5, model="small").text()
        assert _code(err) == grpc.StatusCode.NOT_FOUND and err.value.details.endswith("served: default, third")
        assert c.info("third").cell == "rnn" and len(c.generate(PROMPT, max_chars=9, model="third").text()) == 9
        assert head + live.text() == expected, "the stream on the removed model did not finish as it started"
        assert wait_until(lambda: "small" not in {m.name for m in models})
        reg = srv.registry
        assert wait_until(lambda: {s["model"] for s in series(reg, "charrnn_streams_finished_total")} == {
            "default", "third"})  # fmt: skip
        assert {s["model"] for s in series(reg, "charrnn_model_info")} == {"default", "third"}
        assert value(reg, "charrnn_model_reloads_total", model="third", result="added") == 1

        third = models.get("third")
        shutil.rmtree(repo / "default")
        shutil.copytree(artifacts["lstm_other"], repo / "default")
        assert srv.call(srv.server.reload()) == {"default": "loaded", "third": "unchanged"}
        assert models.get("third") is third and c.info().sha256 != untouched.sha256
        (repo / "third" / "serving.json").write_text('{"max_live_streams": 0}')  # refused: serves as before
        assert srv.call(srv.server.reload())["third"] == "refused" and models.get("third") is third


def test_watch_repository_picks_up_a_new_folder_by_itself(repo: Path, artifacts: dict[str, Path]) -> None:
    config = make_config(None, model_repository=repo, watch_repository=0.1)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as c:
        shutil.copytree(artifacts["rnn"], repo / "third")
        assert wait_until(lambda: "third" in [m.served_name for m in c.list_models()], 30)
        shutil.rmtree(repo / "third")
        assert wait_until(lambda: "third" not in [m.served_name for m in c.list_models()], 30)


def test_sighup_rescans_the_repository_of_charrnn_serve(repo: Path, artifacts: dict[str, Path], tmp_path: Path) -> None:
    proc = ServerProcess(repo, tmp_path, flag="--model-repository").wait_ready()
    try:
        with Client(proc.target, timeout=30) as c:
            assert [m.served_name for m in c.list_models()] == ["default", "small"]
            shutil.copytree(artifacts["rnn"], repo / "third")
            shutil.rmtree(repo / "small")
            proc.proc.send_signal(signal.SIGHUP)
            names = lambda: [m.served_name for m in c.list_models()]  # noqa: E731
            assert wait_until(lambda: names() == ["default", "third"], 30), proc.output()
            assert len(c.generate(PROMPT, max_chars=20, model="third").text()) == 20
    finally:
        assert proc.stop() == 0


def test_the_client_cli_names_a_model_and_an_unknown_one_is_one_line_and_exit_2(repo: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(charrnn_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=60)

    with ServerThread(make_config(None, model_repository=repo)) as srv, Client(srv.target, timeout=30) as c:
        target = ("--target", srv.target)
        listed = [json.loads(line) for line in run("models", *target).stdout.splitlines()]
        assert [(m["served_name"], m["default"], m["cell"]) for m in listed] == [
            ("default", True, "lstm"), ("small", False, "gru")]  # fmt: skip
        assert json.loads(run("info", "--model", "small", *target).stdout)["hidden_size"] == 16
        sampling = ("--max-chars", "40", "--seed", "2", *target)
        out = run("generate", PROMPT, "--model", "small", *sampling)
        assert out.returncode == 0 and out.stdout == c.generate(PROMPT, max_chars=40, seed=2, model="small").text()
        score = json.loads(run("score", "x = 1", "--model", "small", *target).stdout)
        assert score["bits_per_char"] == pytest.approx(c.score("x = 1", model="small").bits_per_char)
        for command in (("generate", PROMPT), ("score", PROMPT), ("info",)):
            done = run(*command, "--model", "shakespeare", *target)
            assert done.returncode == 2 and done.stdout == "", done
            assert done.stderr.count("\n") == 1 and "served: default, small" in done.stderr, done.stderr
