"""Deploy stage worker and inference service, one script.

``infer.py deploy`` is the Deploy stage's worker: it loads the model the LC put under the
deploy directory (MODEL_URLS), checks that it predicts, and publishes it to the inference
service by rewriting ``$DEPLOY_DIR/serving.json`` atomically. Then it posts to the LC's worker
API and exits, which completes the stage.

``infer.py serve --port P --deploy-dir D`` is the long-running inference service on the edge
node (``lifelong demo`` starts it next to the LC). ``POST /predict`` with
``{"instances": [[64 pixel values 0..16], ...]}`` answers ``{"predictions": [...], "model":
{"round": R}}``; before the first deployment it answers 503. It picks up a redeployed model
by itself: every request checks ``serving.json`` and reloads the model when it changed.
``GET /model`` tells which model is served.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from common_io import load_model, local_path, post_info


def deploy() -> int:
    urls = [u for u in os.environ.get("MODEL_URLS", "").split(",") if u]
    if not urls:
        print("MODEL_URLS is empty", file=sys.stderr)
        return 1
    model = load_model(urls[0])
    model["estimator"].predict(np.zeros((1, 64)))  # refuse to deploy a model that cannot predict
    deploy_dir = Path(os.environ.get("DEPLOY_DIR") or local_path(urls[0]).parent)
    deploy_dir.mkdir(parents=True, exist_ok=True)
    pointer = {"url": str(local_path(urls[0])), "round": model["round"], "deployedAt": time.time()}
    tmp = deploy_dir / "serving.json.tmp"
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, deploy_dir / "serving.json")
    print(f"deployed the model of round {model['round']} from {urls[0]}")
    post_info([])
    return 0


class Service:
    """The model being served, reloaded when ``serving.json`` changes."""

    def __init__(self, deploy_dir: Path) -> None:
        self.pointer = deploy_dir / "serving.json"
        self.lock = threading.Lock()
        self.signature: tuple[int, int] | None = None
        self.model: dict[str, Any] | None = None
        self.served = 0

    def current(self) -> dict[str, Any] | None:
        with self.lock:
            try:
                st = self.pointer.stat()
            except FileNotFoundError:
                return self.model
            sig = (st.st_mtime_ns, st.st_size)
            if sig != self.signature:
                info = json.loads(self.pointer.read_text())
                self.model = load_model(info["url"])
                self.signature = sig
                print(f"serving the model of round {self.model['round']}", flush=True)
            return self.model


def serve(port: int, deploy_dir: Path) -> int:
    service = Service(deploy_dir)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def answer(self, code: int, value: Any) -> None:
            data = json.dumps(value).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            model = service.current()
            if self.path == "/model":
                info = None if model is None else {"round": model["round"], "samples": model["samples"]}
                self.answer(200, {"model": info, "served": service.served})
            else:
                self.answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/predict":
                self.answer(404, {"error": "not found"})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            model = service.current()
            if model is None:
                self.answer(503, {"error": "no model deployed yet"})
                return
            x = np.array(body.get("instances") or [], dtype=float).reshape(-1, 64) / 16.0
            predictions = model["estimator"].predict(x).tolist() if len(x) else []
            service.served += len(predictions)
            self.answer(200, {"predictions": predictions, "model": {"round": model["round"]}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"inference service on 127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("deploy", help="the Deploy stage worker")
    s = sub.add_parser("serve", help="the inference service")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--deploy-dir", type=Path, required=True)
    args = parser.parse_args()
    if args.mode == "deploy":
        return deploy()
    return serve(args.port, args.deploy_dir)


if __name__ == "__main__":
    sys.exit(main())
