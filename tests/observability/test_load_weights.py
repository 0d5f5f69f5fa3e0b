"""The locustfile's user-weight options reach Locust: `--score-weight 0` leaves the Score user out and
`--stream-weight 5` weighs the streaming user. Locust's own parser and init event, in a subprocess
(importing Locust patches the standard library for gevent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
sys.path.insert(0, "bench/load")
import locustfile
from locust import events
from locust.argument_parser import get_parser
from locust.env import Environment

options = get_parser().parse_args(["-f", "bench/load/locustfile.py", *sys.argv[1:]])
users = [locustfile.StreamUser, locustfile.SessionUser, locustfile.ScoreUser]
env = Environment(user_classes=users, parsed_options=options, events=events)
events.init.fire(environment=env, runner=None, web_ui=None)
print(json.dumps({cls.__name__: cls.weight for cls in env.user_classes}))
"""


def test_user_weights_from_the_command_line_reach_locust() -> None:
    args = ["--score-weight", "0", "--stream-weight", "5"]
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"StreamUser": 5, "SessionUser": 1}
