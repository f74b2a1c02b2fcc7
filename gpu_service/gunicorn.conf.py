"""gunicorn settings for the inference service on Cloud Run.

One worker: each worker would load its own copy of the model into GPU memory, and the
point of the shared batcher is that every request in the instance feeds one model.
Threads = Cloud Run's concurrency (``CONCURRENCY``), so that many requests can be in
flight and their LIME batches merged. No worker timeout: a LIME explanation can take
minutes on a large image, Cloud Run enforces the request timeout, and with the gthread
worker the heartbeat does not depend on requests finishing.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("CONCURRENCY", "4"))
timeout = 0
# Cloud Run sends SIGTERM and waits 10 s before SIGKILL; unfinished pushes are redelivered.
graceful_timeout = 8
keepalive = 75  # above the Google front end's idle timeout, so it never reuses a closed connection
# Cloud Run logs every request itself; the app logs structured JSON to stdout.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
preload_app = False  # load the model inside the worker, after the fork (TensorFlow is not fork-safe)
