"""``python -m bayling_duplex.serve [checkpoint=…] [overrides]``: the live full-duplex server.

Loads a checkpoint (default: the newest finished ``runs/sft/*/final``), then serves
the browser page at ``http://HOST:PORT/`` and sessions on ``ws://HOST:PORT/api/chat``
until interrupted (Ctrl-C / SIGTERM close every session with a ``shutdown`` error
first). docs/serving.md has the wire format and the limits.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, run_hydra_command, to_dataclass
from bayling_duplex.format.vocab import VocabError

log = logging.getLogger("bayling_duplex.serve")
_EXTRA = (
    'the server needs the serve extra: pip install -e ".[serve]" (starlette, uvicorn, websockets)'
)


def make_server(conf, engine=None):
    """``(uvicorn server, app)`` for ``conf`` (a ServeConfig); ``engine`` defaults to the checkpoint's."""
    try:
        import uvicorn

        from bayling_duplex.serve.app import Server, create_app
    except ImportError as e:
        raise ConfigError(f"{_EXTRA} ({e})") from None
    if engine is None:
        from bayling_duplex.serve.engine import load_engine

        engine = load_engine(conf)
    app = create_app(engine, conf)
    config = uvicorn.Config(
        app,
        host=conf.host,
        port=conf.port,
        log_config=None,  # Hydra's logging
        access_log=False,
        ws_max_size=2 * (1 + 2 * conf.max_frame_samples),  # larger frames: refused by uvicorn
        timeout_graceful_shutdown=10,
    )
    return Server(config), app


def serve(conf) -> None:
    server, _ = make_server(conf)
    log.info(
        "page http://%s:%d/  sessions ws://%s:%d/api/chat  status http://%s:%d/api/status "
        "(at most %d sessions)",
        *(conf.host, conf.port) * 3,
        conf.max_sessions,
    )
    server.run()


def _main(cfg: DictConfig) -> None:
    from bayling_duplex.model.checkpoint import CheckpointError
    from bayling_duplex.serve.config import ServeConfig

    try:
        conf = to_dataclass(cfg, ServeConfig)
        serve(conf)
    except (ConfigError, CheckpointError, VocabError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        argv = ["run", *argv]  # a single command: `python -m bayling_duplex.serve [overrides]`
    run_hydra_command("serve", {"run": ("serve", _main)}, argv)


if __name__ == "__main__":
    main()
