"""Pub/Sub push stand-in for the local stack: pull subscriptions in, push requests out.

Local stack only, never product code. The emulator's own push loop is not enough to show
production's behaviour: its pushes carry no ``deliveryAttempt``, and with several messages
failing at once it stops pushing them after a few attempts (measured with the emulator this
project pins), so a downstream outage looks like lost messages. This relay pulls each route's
subscription and pushes every message as Pub/Sub does: the push envelope with ``messageId``,
``publishTime`` and ``deliveryAttempt``; a 2xx acknowledges it; anything else hands it back
after the route's exponential backoff (``min_backoff_s`` doubling up to ``max_backoff_s``); on a
route with ``max_attempts`` the message goes to its dead-letter topic after that many attempts,
as the dead-letter policy does. ``GET /stats`` counts what happened.

Routes come as JSON in ``RELAY_ROUTES``: ``[{"subscription", "endpoint", "min_backoff_s",
"max_backoff_s", "max_attempts", "dead_letter_topic", "timeout_s"}]``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests


@dataclass(frozen=True)
class Route:
    subscription: str  # projects/P/subscriptions/S
    endpoint: str
    min_backoff_s: float = 1.0
    max_backoff_s: float = 10.0
    max_attempts: int = 0  # 0: no dead-letter policy
    dead_letter_topic: str | None = None  # projects/P/topics/T
    timeout_s: float = 600.0  # the subscription's ack deadline: how long a push may take

    def backoff_s(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.min_backoff_s * 2 ** max(0, attempt - 1))


class Relay:
    def __init__(self, host: str, routes: list[Route]) -> None:
        self.base = f"http://{host}/v1"
        self.routes = routes
        self.stats: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()  # per subscription and message id
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(16 * max(1, len(routes)), thread_name_prefix="push")

    def run(self) -> None:
        for route in self.routes:
            threading.Thread(target=self._loop, args=(route,), daemon=True).start()

    def _loop(self, route: Route) -> None:
        session = requests.Session()
        in_flight = threading.Semaphore(16)
        while not self.stopping.is_set():
            try:
                r = session.post(
                    f"{self.base}/{route.subscription}:pull",
                    json={"maxMessages": 8, "returnImmediately": True},
                    timeout=30,
                )
                r.raise_for_status()
                received = r.json().get("receivedMessages", [])
            except requests.RequestException:
                received = []
                time.sleep(1)
            if not received:
                time.sleep(0.2)
                continue
            for item in received:
                in_flight.acquire()
                future = self.pool.submit(self._push, route, item)
                future.add_done_callback(lambda _f: in_flight.release())

    def _push(self, route: Route, item: dict[str, Any]) -> None:
        message = item["message"]
        key = f"{route.subscription}#{message.get('messageId')}"
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        envelope = {
            "message": {
                k: message[k] for k in ("data", "attributes", "messageId", "publishTime") if k in message
            },
            "subscription": route.subscription,
            "deliveryAttempt": attempt,
        }
        try:
            answer = requests.post(route.endpoint, json=envelope, timeout=route.timeout_s)
            ok = 200 <= answer.status_code < 300 or answer.status_code == 102
        except requests.RequestException:
            ok = False
        sub = f"{self.base}/{route.subscription}"
        if ok:
            self._count("delivered", key)
            requests.post(f"{sub}:acknowledge", json={"ackIds": [item["ackId"]]}, timeout=10)
        elif route.max_attempts and attempt >= route.max_attempts and route.dead_letter_topic:
            dead = {"messages": [{k: message[k] for k in ("data", "attributes") if k in message}]}
            requests.post(f"{self.base}/{route.dead_letter_topic}:publish", json=dead, timeout=10)
            requests.post(f"{sub}:acknowledge", json={"ackIds": [item["ackId"]]}, timeout=10)
            self._count("dead_lettered", key)
        else:
            self._count("retried", None)
            # Held for the backoff, then handed back at once: the emulator does not redeliver a
            # message whose ack deadline was set to a few seconds (measured: it never came back).
            self.stopping.wait(route.backoff_s(attempt))
            deadline = {"ackIds": [item["ackId"]], "ackDeadlineSeconds": 0}
            requests.post(f"{sub}:modifyAckDeadline", json=deadline, timeout=10)

    def _count(self, what: str, done_key: str | None) -> None:
        with self.lock:
            self.stats[what] += 1
            if done_key is not None:
                self.attempts.pop(done_key, None)


def serve(relay: Relay, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path not in ("/healthz", "/stats"):
                self.send_error(404)
                return
            with relay.lock:
                body = json.dumps(dict(relay.stats) if self.path == "/stats" else {"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    routes = [Route(**r) for r in json.loads(os.environ["RELAY_ROUTES"])]
    relay = Relay(os.environ["PUBSUB_EMULATOR_HOST"], routes)
    relay.run()
    server = serve(relay, os.environ.get("RELAY_HOST", "127.0.0.1"), int(os.environ["RELAY_PORT"]))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        relay.stopping.set()
        server.shutdown()


if __name__ == "__main__":
    main()
