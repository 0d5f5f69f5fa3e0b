"""Service subcommands: serve, generate, score, info, session-less helpers, and `bench serve`.

Imported by charrnn/cli.py at startup, so it imports nothing heavy: each handler imports
grpc / onnxruntime / numpy modules when it runs. Every flag also reads a `CHARRNN_*`
environment variable (flag name upper-cased, dashes to underscores), shown in --help.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import DEFAULT_METRICS_PORT

DEFAULT_TARGET = "127.0.0.1:50051"


def _env_name(flag: str) -> str:
    return "CHARRNN_" + flag.lstrip("-").upper().replace("-", "_")


def _add(
    parser: argparse.ArgumentParser, flag: str, *, type: Callable[[str], Any] = str, default: Any = None, help: str
) -> None:
    """A flag whose default comes from CHARRNN_<FLAG> when set."""
    env = _env_name(flag)
    raw = os.environ.get(env)
    value = type(raw) if raw is not None else default
    parser.add_argument(flag, type=type, default=value, help=f"{help} [env {env}; default {default}]")


def _add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    env = _env_name(flag)
    on = os.environ.get(env, "").lower() in ("1", "true", "yes", "on")
    parser.add_argument(flag, action="store_true", default=on, help=f"{help} [env {env}=1]")


def _add_target(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--target", default=DEFAULT_TARGET, help="server address HOST:PORT")
    _add_switch(parser, "--tls", help="connect with TLS (the system's CAs unless --tls-ca)")
    _add(parser, "--tls-ca", type=Path, default=None, help="PEM CA bundle to verify the server (implies --tls)")
    _add(parser, "--tls-client-cert", type=Path, default=None, help="PEM client certificate for mutual TLS")
    _add(parser, "--tls-client-key", type=Path, default=None, help="PEM key of --tls-client-cert")
    _add(parser, "--auth-token", default=None, help="bearer token sent as 'authorization: Bearer ...'")
    _add(parser, "--timeout", type=float, default=None, help="deadline per call, seconds")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--max-chars", type=int, default=0, help="characters to generate (0: the server's default)")
    _add(parser, "--temperature", type=float, default=None, help="0 = greedy; unset = 1.0")
    _add(parser, "--top-k", type=int, default=0, help="keep the k most likely characters (0 = off)")
    _add(parser, "--top-p", type=float, default=None, help="nucleus mass in (0, 1] (unset = off)")
    _add(parser, "--seed", type=int, default=None, help="random seed (unset: continue the state's, or random)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def register(sub: Any, bench_sub: Any) -> None:
    """Add serve/generate/score/info to `charrnn`, and serve/overload/soak to `charrnn bench`."""
    p = sub.add_parser("serve", help="serve the model over gRPC (continuous batching)")
    _add(p, "--model", type=Path, default=Path("models/default"), help="model artifact directory")
    _add(p, "--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    _add(p, "--port", type=int, default=50051, help="port (0 = any free port)")
    _add(p, "--port-file", type=Path, default=None, help="write the bound port here once SERVING")
    _add(
        p, "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="/metrics HTTP port (0 = any free, -1 = off)"
    )
    _add(p, "--metrics-port-file", type=Path, default=None, help="write the bound metrics port here once SERVING")
    _add(p, "--hmac-key", default=None, help="secret that signs resume tokens (this or --hmac-key-file unless --dev)")
    _add(p, "--hmac-key-file", type=Path, default=None, help="file holding the HMAC key (e.g. a mounted Secret)")
    _add_switch(p, "--dev", help="allow a published development HMAC key (logs a warning)")
    _add(p, "--metrics-host", default=None, help="/metrics bind address (unset: --host); keep it private")
    _add(p, "--tls-cert", type=Path, default=None, help="PEM certificate chain: serve gRPC over TLS only")
    _add(p, "--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    _add(p, "--tls-client-ca", type=Path, default=None, help="PEM CA: require client certificates (mutual TLS)")
    _add(p, "--auth-token-file", type=Path, default=None, help="bearer tokens, one per line (+ CHARRNN_AUTH_TOKENS)")
    _add(p, "--max-batch", type=int, default=64, help="max live streams advanced per step (1 = no batching)")
    _add(p, "--max-queue", type=int, default=256, help="max streams waiting for a slot")
    _add(p, "--max-prompt-chars", type=int, default=8192, help="longest prompt / fed text")
    _add(p, "--max-chars-limit", type=int, default=20000, help="largest max_chars a request may ask for")
    _add(p, "--default-max-chars", type=int, default=256, help="max_chars when a request leaves it 0")
    _add(p, "--max-stop-strings", type=int, default=8, help="stop strings per request")
    _add(p, "--max-stop-chars", type=int, default=64, help="longest stop string")
    _add(p, "--max-score-chars", type=int, default=65536, help="longest text for Score")
    _add(p, "--max-watched-units", type=int, default=16, help="hidden units one Generate may watch")
    _add(p, "--min-checkpoint-chars", type=int, default=64, help="smallest checkpoint_every_chars accepted")
    _add(p, "--max-sessions", type=int, default=1024, help="server-side sessions kept (LRU)")
    _add(p, "--session-ttl", type=float, default=600.0, help="idle seconds before a session expires")
    _add(p, "--session-memory-mb", type=float, default=64.0, help="memory bound on sessions' state (LRU)")
    _add(p, "--flush-interval-ms", type=float, default=100.0, help="coalescing: send a stream's text this often")
    _add(p, "--max-chunk-chars", type=int, default=256, help="coalescing: or once this many characters wait")
    _add(p, "--grace", type=float, default=20.0, help="seconds live streams may drain after SIGTERM")
    _add(p, "--retry-pushback-ms", type=int, default=1000, help="retry hint sent when draining or full")
    _add(p, "--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    _add_switch(p, "--spinning", help="let ONNX Runtime threads spin between calls")
    p.set_defaults(handler=_serve)

    g = sub.add_parser("generate", help="stream generated text from a server to stdout")
    g.add_argument("prompt", nargs="?", default="", help="text to continue")
    _add_target(g)
    _add_sampling(g)
    g.add_argument("--resume", type=Path, help="continue from a resume token saved with --save-state")
    g.add_argument("--session", help="continue from (and update) a server-side session id")
    g.add_argument("--create-session", action="store_true", help="keep the final state in a new session (id to stderr)")
    g.add_argument("--save-state", type=Path, help="write the final resume token to this file")
    g.add_argument("--watch", help="hidden units to stream, KIND:LAYER:INDEX,... (KIND h, or c for LSTM)")
    g.add_argument(
        "--watch-format",
        choices=["color", "tsv"],
        default="color",
        help="color: text on the first unit's colour (negative blue, positive red); tsv: values per character",
    )
    g.add_argument("--watch-scale", type=float, default=1.0, help="value at which the colour saturates")
    g.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="auto: only on a terminal")
    g.set_defaults(handler=_generate)

    s = sub.add_parser("score", help="bits per character of a text under the served model")
    s.add_argument("text", nargs="?", help="text to score (or --file)")
    s.add_argument("--file", type=Path, help="read the text from a file")
    _add_target(s)
    s.add_argument("--resume", type=Path, help="score as a continuation of a saved state")
    s.add_argument("--per-char", action="store_true", help="also print each character's log-probability")
    s.set_defaults(handler=_score)

    i = sub.add_parser("info", help="what the served model is (JSON)")
    _add_target(i)
    i.set_defaults(handler=_info)

    b = bench_sub.add_parser("serve", help="streams/s through gRPC vs the in-process ONNX Runtime ceiling")
    _add(b, "--model", type=Path, default=Path("models/default"), help="model artifact directory")
    _add(b, "--duration", type=float, default=10.0, help="seconds per measurement")
    b.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64], help="concurrent streams to measure")
    _add(b, "--max-chars", type=int, default=2000, help="characters per request")
    _add(b, "--out", type=Path, default=Path("bench-results/serve"), help="directory for JSON and PNG")
    _add(b, "--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads (server and ceiling)")
    _add(b, "--flush-interval-ms", type=float, default=100.0, help="server coalescing interval")
    b.set_defaults(handler=_bench)

    o = bench_sub.add_parser("overload", help="10x the stream limit: refusals, admitted streams' pace, RSS")
    _add(o, "--model", type=Path, default=Path("models/default"), help="model artifact directory")
    _add(o, "--max-batch", type=int, default=16, help="the server's live-stream limit")
    _add(o, "--max-queue", type=int, default=16, help="the server's queue limit")
    _add(o, "--factor", type=int, default=10, help="concurrent clients = factor x (max-batch + max-queue)")
    _add(o, "--seconds", type=float, default=60.0, help="length of the overload phase")
    _add(o, "--baseline-streams", type=int, default=4, help="streams for the unloaded inter-chunk figure")
    _add(o, "--baseline-seconds", type=float, default=10.0, help="length of the unloaded phase")
    _add(o, "--max-chars", type=int, default=400, help="characters per request")
    _add(o, "--flush-interval-ms", type=float, default=100.0, help="server coalescing interval")
    _add(o, "--out", type=Path, default=Path("bench-results/overload"), help="directory for the JSON")
    o.set_defaults(handler=_bench_overload)

    k = bench_sub.add_parser("soak", help="streams, session churn and cancellations for N minutes: errors, RSS")
    _add(k, "--model", type=Path, default=Path("models/default"), help="model artifact directory")
    _add(k, "--minutes", type=float, default=10.0, help="length of the soak")
    _add(k, "--streams", type=int, default=64, help="concurrent Generate clients (also the server's max-batch)")
    _add(k, "--session-clients", type=int, default=4, help="concurrent session-churn clients")
    _add(k, "--cancel-share", type=float, default=0.2, help="share of streams cancelled after a few chunks")
    _add(k, "--max-chars", type=int, default=400, help="characters per request")
    _add(k, "--session-ttl", type=float, default=5.0, help="the server's session TTL (left sessions expire)")
    _add(k, "--warm-up-seconds", type=float, default=60.0, help="RSS baseline point (at most a third of the run)")
    _add(k, "--sample-seconds", type=float, default=5.0, help="RSS sampling interval")
    _add(k, "--drain-seconds", type=float, default=30.0, help="wait past the TTL for the gauges to reach zero")
    _add(k, "--out", type=Path, default=Path("bench-results/soak"), help="directory for the JSON")
    k.set_defaults(handler=_bench_soak)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from charrnn.artifact import ArtifactError
    from service.config import ConfigError, EngineOptions, Limits, ServerConfig, split_tokens
    from service.server import serve

    config = ServerConfig(
        model_dir=args.model,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        metrics_port_file=args.metrics_port_file,
        limits=Limits(
            max_live_streams=args.max_batch,
            max_queued_streams=args.max_queue,
            max_prompt_chars=args.max_prompt_chars,
            max_chars=args.max_chars_limit,
            default_max_chars=args.default_max_chars,
            max_stop_strings=args.max_stop_strings,
            max_stop_chars=args.max_stop_chars,
            max_score_chars=args.max_score_chars,
            max_watched_units=args.max_watched_units,
            min_checkpoint_chars=args.min_checkpoint_chars,
            max_sessions=args.max_sessions,
            session_ttl_s=args.session_ttl,
            session_memory_bytes=int(args.session_memory_mb * (1 << 20)),
        ),
        engine=EngineOptions(intra_op_threads=args.intra_op_threads, allow_spinning=args.spinning),
        flush_interval_s=args.flush_interval_ms / 1000.0,
        max_chunk_chars=args.max_chunk_chars,
        grace_s=args.grace,
        retry_pushback_ms=args.retry_pushback_ms,
        hmac_key=args.hmac_key,
        hmac_key_file=args.hmac_key_file,
        dev=args.dev,
        metrics_host=args.metrics_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_tokens=split_tokens(os.environ.get("CHARRNN_AUTH_TOKENS")),
        auth_token_file=args.auth_token_file,
    )
    try:
        return asyncio.run(serve(config))
    except (ArtifactError, ConfigError) as exc:
        logging.getLogger("charrnn.serve").error("cannot start: %s", exc)
        print(f"charrnn serve: cannot start: {exc}", file=sys.stderr)
        return 2


def _client(args: argparse.Namespace) -> Any:
    """A Client for the target, TLS and token options of `_add_target`."""
    from service.client import Client

    def pem(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return Client(
        args.target,
        timeout=args.timeout,
        tls=args.tls,
        tls_ca=pem(args.tls_ca),
        tls_cert=pem(args.tls_client_cert),
        tls_key=pem(args.tls_client_key),
        auth_token=args.auth_token,
    )


def _fail(exc: Exception) -> int:
    print(f"charrnn: {exc}", file=sys.stderr)
    return 1


def _generate(args: argparse.Namespace) -> int:
    from service import heatmap
    from service.client import CharRNNError, parse_units

    token = args.resume.read_bytes() if args.resume else None
    try:
        watch = parse_units(args.watch or "")
    except ValueError as exc:
        return _fail(exc)
    tsv = bool(watch) and args.watch_format == "tsv"
    colour = bool(watch) and not tsv and (args.color == "always" or (args.color == "auto" and sys.stdout.isatty()))
    with _client(args) as client:
        gen = client.generate(
            args.prompt,
            max_chars=args.max_chars,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop,
            resume_token=token,
            session_id=args.session,
            create_session=args.create_session,
            watch=watch,
        )
        if tsv:
            sys.stdout.write(heatmap.tsv_header(watch))
        try:
            for chunk, values in gen.chunks():
                if tsv:
                    chunk = heatmap.tsv_rows(chunk, values)
                elif colour:
                    chunk = heatmap.colour_text(chunk, [v[0] for v in values], args.watch_scale)
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except CharRNNError as exc:
            return _fail(exc)
    if sys.stdout.isatty() and not tsv:
        sys.stdout.write("\n")
    result = gen.result
    assert result is not None
    if args.save_state:
        args.save_state.write_bytes(result.resume_token)
    if result.session_id:
        print(f"session: {result.session_id}", file=sys.stderr)
    return 0


def _score(args: argparse.Namespace) -> int:
    from service.client import CharRNNError

    if (args.text is None) == (args.file is None):
        return _fail(ValueError("give the text or --file, not both"))
    text = args.text if args.text is not None else args.file.read_text(encoding="utf-8")
    token = args.resume.read_bytes() if args.resume else None
    with _client(args) as client:
        try:
            r = client.score(text, resume_token=token)
        except CharRNNError as exc:
            return _fail(exc)
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
    from dataclasses import asdict

    from service.client import CharRNNError

    with _client(args) as client:
        try:
            info = client.info()
        except CharRNNError as exc:
            return _fail(exc)
    data = asdict(info)
    data["vocabulary"] = "".join(info.vocabulary)
    print(json.dumps(data, ensure_ascii=False, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from service.bench import main as bench_main

    return bench_main(args)


def _bench_overload(args: argparse.Namespace) -> int:
    from service.bench_reliability import main_overload

    return main_overload(args)


def _bench_soak(args: argparse.Namespace) -> int:
    from service.bench_reliability import main_soak

    return main_soak(args)
