"""moto's S3 server with compare-and-swap that holds under concurrency.

moto checks `If-Match` / `If-None-Match` and then writes, in two steps
that concurrent requests can interleave: two writers that observed the
same version can both win. Real S3 (and MinIO) decide conditional writes
atomically, and the lease protocol relies on it, so this launcher runs
moto's own WSGI application with one lock around every conditional write.
Other requests run concurrently as before.

Usage: .venv/bin/python scripts/moto-server.py -H 127.0.0.1 -p PORT
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

CONDITIONAL = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")


def serialize_conditional_writes(app):
    lock = threading.Lock()

    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST") and any(
            h in environ for h in CONDITIONAL
        ):
            with lock:
                # Run the whole request, body included, under the lock.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        serialize_conditional_writes(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
