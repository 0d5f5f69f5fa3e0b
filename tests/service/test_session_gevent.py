"""SessionClient under gevent (as in Locust): a user killed mid-receive must close without a second receive.

grpc's stream iterator posts a new ReceiveMessage on every next(); after a greenlet was killed inside one,
draining on close posted another on the same call: "Internal gRPC call error 8" (TOO_MANY_OPERATIONS),
the cause of the load smoke test's flakes. Runs in a subprocess: gevent monkey-patches the interpreter.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.harness import REPO, ServerThread, make_config

# find_spec, not importorskip: importing locust here would monkey-patch the test process for gevent.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="the `load` extra (locust, gevent) is not installed"
)

SCRIPT = """
import sys
import locust  # monkey-patches for gevent, as under `locust -f`
import gevent
import gevent.event
import grpc.experimental.gevent
grpc.experimental.gevent.init_gevent()
from charrnn.client import Client

client = Client(sys.argv[1], timeout=60)
outcome = []
streaming = gevent.event.Event()

def user():
    try:
        with client.session() as s:
            s.feed("def ")
            gen = s.generate(max_chars=20000)
            next(gen)
            streaming.set()
            gen.text()
    except BaseException as exc:
        outcome.append(type(exc).__name__)
        raise

greenlet = gevent.spawn(user)
streaming.wait(30)
gevent.sleep(0.02)  # inside a later receive of the generation
greenlet.kill(block=True, timeout=30)
assert greenlet.dead, "the killed user is still running"
with client.session() as s:  # the channel still serves new sessions
    assert s.feed("x") == 1
client.close()
print("outcome", outcome)
"""


def test_killed_greenlet_closes_its_session_cleanly(lstm_dir: Path) -> None:
    with ServerThread(make_config(lstm_dir)) as srv:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, srv.target], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "outcome ['GreenletExit']" in result.stdout, output
    assert "call error" not in output, output
