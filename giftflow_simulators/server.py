"""Run an ASGI app with uvicorn: in a background thread for tests and the demo, or in the foreground for the CLI."""

from __future__ import annotations

import threading
import time

import uvicorn


class BackgroundServer:
    """An ASGI app served on 127.0.0.1 by uvicorn in a daemon thread; port 0 picks a free port."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        # lifespan off: the simulators need no startup hooks, and it saves a round trip at start.
        self._config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    def start(self, timeout_s: float = 5.0) -> str:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._server.run, name="giftflow-sim", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start on {self._config.host}:{self._config.port}")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{self._config.host}:{port}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
        self.base_url = None

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(app, port: int, host: str = "127.0.0.1") -> None:
    """Serve `app` in the foreground until interrupted (Ctrl-C)."""
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")
