"""The locustfile's options reach Locust: user weights (`--score-weight 0` leaves the Score user out), the
HTTP user (only with `--http-host`), and the model mix (`--model-weights`): parsed and refused by Locust's
own parser, drawn by weight, and named in each request's `model` field. Locust's own parser and init event,
in a subprocess (importing Locust patches the standard library for gevent)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

SETUP = """
import json, random, sys
sys.path.insert(0, "bench/load")
import locustfile
from locust import events
from locust.argument_parser import get_parser
from locust.env import Environment

options = get_parser().parse_args(["-f", "bench/load/locustfile.py", *sys.argv[1:]])
users = [locustfile.StreamUser, locustfile.SessionUser, locustfile.ScoreUser, locustfile.HttpStreamUser]
env = Environment(user_classes=users, parsed_options=options, events=events)
events.init.fire(environment=env, runner=None, web_ui=None)
"""
WEIGHTS = SETUP + "print(json.dumps({cls.__name__: cls.weight for cls in env.user_classes}))"
# What the users send: N draws of the mix with a seeded generator, an HTTP body, and the gRPC keyword.
REQUESTS = (
    SETUP
    + """
mix = locustfile.MIX
rng = random.Random(7)
user = locustfile.StreamUser(env)
user.mix = mix
print(json.dumps({
    "draws": [mix.model(rng) for _ in range(int(sys.argv[-1]))],
    "body": mix.completion("def ", 20, mix.model(rng)),
    "grpc_with_field": user.model_field(True),
    "grpc_without_field": user.model_field(False),
    "generate_has_model": locustfile.GENERATE_HAS_MODEL,
    "descriptor_has_model": "model" in locustfile.pb.GenerateRequest.DESCRIPTOR.fields_by_name,
}))
"""
)


def locust(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def last_json(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_user_weights_from_the_command_line_reach_locust() -> None:
    weights = last_json(locust(WEIGHTS, "--score-weight", "0", "--stream-weight", "5"))
    assert weights == {"StreamUser": 5, "SessionUser": 1}, "no HTTP user without --http-host"


def test_the_http_user_runs_with_an_http_root() -> None:
    weights = last_json(locust(WEIGHTS, "--http-host", "http://127.0.0.1:8000/", "--http-weight", "2"))
    assert weights == {"StreamUser": 3, "SessionUser": 1, "ScoreUser": 1, "HttpStreamUser": 2}


# Each bad option, parsed by Locust's own parser in one process: (exit code, what it wrote to stderr).
REFUSALS = """
import contextlib, io, json, sys
sys.path.insert(0, "bench/load")
import locustfile
from locust.argument_parser import get_parser

results = []
for flag, value in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            get_parser().parse_args(["-f", "bench/load/locustfile.py", flag, value])
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""
BAD = [
    ("--model-weights", "default3", "'default3' is not NAME=WEIGHT"),
    ("--model-weights", "default=three", "the weight of 'default' is not a number"),
    ("--model-weights", "default=-1", "must be a finite number >= 0"),
    ("--model-weights", "a=1,a=2", "model 'a' is given twice"),
    ("--model-weights", "a=0,b=0", "every weight is 0"),
    ("--http-host", "127.0.0.1:8000", "is not an http:// or https:// URL"),
]


def test_bad_options_are_one_line_and_exit_2() -> None:
    results = last_json(locust(REFUSALS, json.dumps([(flag, value) for flag, value, _ in BAD])))
    for (flag, value, words), (code, stderr) in zip(BAD, results, strict=True):
        assert code == 2, (flag, value, stderr)
        assert f"argument {flag}: " in stderr and words in stderr and "Traceback" not in stderr, stderr


def test_each_request_draws_a_model_by_weight_and_names_it() -> None:
    draws = 20_000
    sent = last_json(locust(REQUESTS, "--model-weights", "default=3, shakespeare=1,unused=0", str(draws)))
    counts = {name: sent["draws"].count(name) for name in set(sent["draws"])}
    assert set(counts) == {"default", "shakespeare"}, "a weight of 0 is never drawn"
    # Binomial: default's share is 3/4 with standard deviation sqrt(p(1-p)/n); five of them is the margin.
    p = 3 / 4
    assert abs(counts["default"] / draws - p) < 5 * math.sqrt(p * (1 - p) / draws), counts
    body = sent["body"]
    assert body["model"] in ("default", "shakespeare") and body["stream"] is True and body["max_tokens"] == 20
    assert body["charrnn"] == {"top_k": 0} and body["temperature"] == 0.8 and body["top_p"] == 1.0
    # gRPC names the model only where the request message has the field (the descriptor says which).
    assert sent["grpc_with_field"]["model"] in ("default", "shakespeare") and sent["grpc_without_field"] == {}
    assert sent["generate_has_model"] == sent["descriptor_has_model"]


def test_without_a_mix_no_request_names_a_model() -> None:
    sent = last_json(locust(REQUESTS, "5"))
    assert sent["draws"] == [None] * 5 and "model" not in sent["body"]
    assert sent["grpc_with_field"] == {}
