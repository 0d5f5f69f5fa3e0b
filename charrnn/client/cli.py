"""Client subcommands: `charrnn generate`, `score` and `info` against a running server.

Light at import (charrnn/cli.py imports every part at startup): grpc loads when a handler runs. The
connection and sampling flags come from the dataclasses below (charrnn.settings), like the server's.
Exit codes: 0 done, 2 a mistake in the request (bad flag, or the server says INVALID_ARGUMENT and the
like), 1 anything else (server unreachable, a failure on its side).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.client.balancing import Balancing, grpc_target
from charrnn.settings import SettingError, add_flags, build, setting

if TYPE_CHECKING:
    from charrnn.client import Client, GenerationOptions, ModelInfo

DEFAULT_TARGET = "127.0.0.1:50051"
# Server answers that mean the request itself was wrong: the command exits 2, as for a bad flag.
_REQUEST_ERRORS = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE", "UNAUTHENTICATED")


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to reach it."""

    target: str = setting(
        DEFAULT_TARGET,
        "server address HOST:PORT; several replicas: IP:PORT,IP:PORT,... or dns:///NAME:PORT (every address of NAME)",
    )
    tls: bool = setting(False, "connect with TLS (the system's CAs unless --tls-ca)")
    tls_ca: Path | None = setting(None, "PEM CA bundle to verify the server (implies --tls)")
    tls_client_cert: Path | None = setting(None, "PEM client certificate for mutual TLS")
    tls_client_key: Path | None = setting(None, "PEM key of --tls-client-cert")
    auth_token: str | None = setting(None, "bearer token sent as 'authorization: Bearer ...'")
    timeout: float | None = setting(None, "deadline per call, seconds")
    balancing: Balancing = field(default_factory=Balancing)

    def __post_init__(self) -> None:
        grpc_target(self.target)  # a SettingError now, while the command can still say it in one line

    def client(self) -> Client:
        from charrnn.client import Client

        def pem(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return Client(
            self.target,
            timeout=self.timeout,
            tls=self.tls,
            tls_ca=pem(self.tls_ca),
            tls_cert=pem(self.tls_client_cert),
            tls_key=pem(self.tls_client_key),
            auth_token=self.auth_token,
            balancing=self.balancing,
        )


@dataclass(frozen=True)
class Sampling:
    """How much to generate and how to sample it (unset: the server's defaults)."""

    max_chars: int = setting(0, "characters to generate (0: the server's default)")
    temperature: float | None = setting(None, "0 = greedy; unset = 1.0")
    top_k: int = setting(0, "keep the k most likely characters (0 = off)")
    top_p: float | None = setting(None, "nucleus mass in (0, 1] (unset = off)")
    seed: int | None = setting(None, "random seed (unset: continue the state's, or random)")

    def check(self) -> None:
        """SettingError for values no server would take (so the user gets one line, not a traceback)."""
        from charrnn.protocol import MAX_SEED  # here: the protocol loads protobuf, which `charrnn --help` never needs

        if self.max_chars < 0:
            raise SettingError(f"--max-chars must be 0 or more, got {self.max_chars}")
        if self.top_k < 0:
            raise SettingError(f"--top-k must be 0 or more, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise SettingError(f"--seed must be in [0, 2**64 - 1], got {self.seed}")

    def options(self, stop: list[str]) -> GenerationOptions:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "seed": self.seed,
                "stop": stop}  # fmt: skip


def register(sub: Any) -> None:
    """Add generate/score/info/models to `charrnn`."""
    g = sub.add_parser("generate", help="stream generated text from a server to stdout")
    g.add_argument("prompt", nargs="?", default="", help="text to continue")
    add_flags(g, Connection)
    _model_arg(g)
    add_flags(g, Sampling)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--resume", type=Path, help="continue from a resume token saved with --save-state")
    g.add_argument("--session", help="continue from (and update) a server-side session id")
    g.add_argument("--create-session", action="store_true", help="keep the final state in a new session (id to stderr)")
    g.add_argument("--save-state", type=Path, help="write the final resume token to this file")
    g.add_argument("--watch", help="hidden units to stream, KIND:LAYER:INDEX,... (KIND h, or c for LSTM)")
    g.add_argument(
        "--watch-format",
        choices=["color", "tsv"],
        default="color",
        help="color: the prompt, then each character on the first unit's colour (negative blue, positive red) "
        "with a legend before and the range after; tsv: values per character",
    )
    g.add_argument(
        "--watch-scale",
        type=float,
        help="value at which the colour saturates (default: 1 for h, which tanh bounds; for the unbounded c, "
        "the largest |value| so far)",
    )
    g.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="auto: only on a terminal")
    _unescape_arg(g, "the prompt and --stop strings")
    g.set_defaults(handler=_generate)

    s = sub.add_parser("score", help="bits per character of a text under the served model")
    s.add_argument("text", nargs="?", help="text to score (or --file)")
    s.add_argument("--file", type=Path, help="read the text from a file")
    add_flags(s, Connection)
    _model_arg(s)
    s.add_argument("--resume", type=Path, help="score as a continuation of a saved state")
    s.add_argument("--per-char", action="store_true", help="also print each character's log-probability")
    _unescape_arg(s, "the text (not --file)")
    s.set_defaults(handler=_score)

    i = sub.add_parser("info", help="what a served model is (JSON)")
    add_flags(i, Connection)
    _model_arg(i)
    i.set_defaults(handler=_info)

    m = sub.add_parser("models", help="the served models (JSON lines: served_name, default, name, sha256, ...)")
    add_flags(m, Connection)
    m.set_defaults(handler=_models)


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a served model's name (`charrnn models`); unset: the server's default")


def _unescape_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--unescape",
        action="store_true",
        help=f"read backslash escapes in {what} (\\n, \\t, \\xHH, \\uHHHH...): for shells without $'...' quoting",
    )


_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.?))", re.DOTALL)


def unescape(text: str) -> str:
    """Python-style backslash escapes in `text` read as the characters they name; SettingError for any other."""

    def one(match: re.Match[str]) -> str:
        hex_digits = match[1] or match[2] or match[3]
        if hex_digits:
            code = int(hex_digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise SettingError(f"--unescape: {match[0]} is not a character")
            return chr(code)
        if match[4] in _ESCAPES:
            return _ESCAPES[match[4]]
        if not match[4]:
            raise SettingError("--unescape: the text ends with a lone backslash (write \\\\ for one)")
        raise SettingError(
            f"--unescape: unknown escape {match[0]!r} at position {match.start()} "
            "(known: \\n \\t \\r \\0 \\\\ \\' \\\" \\xHH \\uHHHH \\UHHHHHHHH)"
        )

    return _ESCAPE.sub(one, text)


def _usage(command: str, message: object) -> int:
    print(f"charrnn {command}: {message}", file=sys.stderr)
    return 2


def _failed(command: str, exc: Exception) -> int:
    print(f"charrnn {command}: {exc}", file=sys.stderr)
    code = getattr(getattr(exc, "code", None), "name", "")
    return 2 if code in _REQUEST_ERRORS else 1


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingError(f"cannot read {what} {path}: {exc.strerror}") from None


def _generate(args: argparse.Namespace) -> int:
    from charrnn.client import CharRNNError, heatmap, parse_units

    try:
        connection = build(Connection, args)
        sampling = build(Sampling, args)
        sampling.check()
        watch = parse_units(args.watch or "")
        token = _read(args.resume, "the resume token")
        if args.watch_scale is not None and not args.watch_scale > 0:
            raise SettingError(f"--watch-scale must be more than 0, got {args.watch_scale}")
        prompt, stop = args.prompt, list(args.stop)
        if args.unescape:
            prompt, stop = unescape(prompt), [unescape(s) for s in stop]
    except (SettingError, ValueError) as exc:
        return _usage("generate", exc)
    tsv = bool(watch) and args.watch_format == "tsv"
    colour = bool(watch) and not tsv and (args.color == "always" or (args.color == "auto" and sys.stdout.isatty()))
    painter = heatmap.Painter(watch[0], args.watch_scale) if colour else None
    with connection.client() as client:
        gen = client.generate(
            prompt,
            max_chars=sampling.max_chars,
            resume_token=token,
            session_id=args.session,
            create_session=args.create_session,
            watch=watch,
            model=args.model,
            **sampling.options(stop),
        )
        if tsv:
            sys.stdout.write(heatmap.tsv_header(watch))
        if painter is not None:
            sys.stdout.write(painter.legend() + prompt)  # the context the colours continue, uncoloured
        try:
            for chunk, values in gen.chunks():
                if tsv:
                    chunk = heatmap.tsv_rows(chunk, values)
                elif painter is not None:
                    chunk = painter.colour(chunk, [v[0] for v in values])
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except CharRNNError as exc:
            return _failed("generate", exc)
    if (sys.stdout.isatty() or painter is not None) and not tsv:
        sys.stdout.write("\n")
    if painter is not None:
        sys.stdout.write(painter.summary())
    result = gen.result
    assert result is not None, "a stream that ends without an error ends with its result"
    if args.save_state:
        args.save_state.write_bytes(result.resume_token)
    if result.session_id:
        print(f"session: {result.session_id}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from charrnn.client import CharRNNError

    try:
        connection = build(Connection, args)
        if (args.text is None) == (args.file is None):
            raise SettingError("give the text or --file, not both")
        raw = _read(args.file, "the file")
        text = args.text if raw is None else raw.decode("utf-8")
        if args.unescape and raw is None:
            text = unescape(text)
        token = _read(args.resume, "the resume token")
    except (SettingError, UnicodeDecodeError) as exc:
        return _usage("score", exc)
    with connection.client() as client:
        try:
            r = client.score(text, resume_token=token, model=args.model)
        except CharRNNError as exc:
            return _failed("score", exc)
    out: dict[str, Any] = {
        "chars": len(text),
        "scored_chars": len(r.logprobs),
        "total_nats": r.total_nats,
        "bits_per_char": r.bits_per_char,
    }
    if args.per_char:
        out["per_char"] = [[text[r.first_scored + i], lp] for i, lp in enumerate(r.logprobs)]
    print(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


def _info(args: argparse.Namespace) -> int:
    return _describe(args, "info", lambda client: [client.info(args.model)], indent=1)


def _models(args: argparse.Namespace) -> int:
    return _describe(args, "models", lambda client: client.list_models(), indent=None)


def _describe(
    args: argparse.Namespace, command: str, fetch: Callable[[Client], list[ModelInfo]], indent: int | None
) -> int:
    """Print what `fetch` asks the server, a JSON object per model (one line each unless `indent`)."""
    from charrnn.client import CharRNNError

    try:
        connection = build(Connection, args)
    except SettingError as exc:
        return _usage(command, exc)
    with connection.client() as client:
        try:
            models = fetch(client)
        except CharRNNError as exc:
            return _failed(command, exc)
    for info in models:
        print(json.dumps(_info_dict(info), ensure_ascii=False, indent=indent))
    return 0


def _info_dict(info: ModelInfo) -> dict[str, Any]:
    data = asdict(info)
    data["vocabulary"] = "".join(info.vocabulary)
    return data
