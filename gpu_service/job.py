"""Cloud Run job: reprocess a folder of uploads, or drain a pull subscription's backlog.

``python -m gpu_service.job --prefix gs://bucket/prefix`` | ``--subscription projects/P/subscriptions/S``.
A delivered result whose DICOM objects the DICOMweb store lacks gets them stored from the
bytes beside the upload (:mod:`gpu_service.pipeline.dicom_backfill`). Both reuse the service's processor,
one batcher shared by ``--concurrency`` threads; the exit status is 1 when anything is left to
retry, so Cloud Run retries the task (done work is skipped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from gpu_service.outcome import ProcessResult, RequestOutcome, is_acked
from gpu_service.pipeline import dicom_backfill
from gpu_service.pipeline.processing import Processor
from gpu_service.request import InferenceRequest, request_for_object
from gpu_service.results.cloud_storage import GcsStore, ObjectInfo
from gpu_service.settings import Settings
from gpu_service.transport.push import MessageError, PubSubMessage, parse_request
from gpu_service.wiring import build_processor, load_warm_model
from pipeline_common import jsonlog, naming, tracing
from pipeline_common.jsonlog import log

logger = logging.getLogger("gpu_service.job")

DICOM_CONTENT_TYPES = ("application/dicom",)
DICOM_MAGIC_OFFSET = 128
ACK_DEADLINE_S = 600


def shard_of(name: str, count: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % max(1, count)


def parse_gs_prefix(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ValueError(f"expected gs://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix


@dataclass
class Summary:
    counts: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    started: float = field(default_factory=time.monotonic)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    @property
    def to_retry(self) -> int:
        return self.counts[RequestOutcome.RETRY.value] + self.counts[RequestOutcome.INVALID.value]

    def as_dict(self) -> dict[str, object]:
        with self.lock:
            return {
                **dict(sorted(self.counts.items())),
                "elapsed_s": round(time.monotonic() - self.started, 1),
            }


def looks_like_dicom(store: GcsStore, obj: ObjectInfo) -> bool:
    if obj.name.lower().endswith(".dcm") or (obj.content_type or "").lower() in DICOM_CONTENT_TYPES:
        return True
    if not obj.size or obj.size < DICOM_MAGIC_OFFSET + 4:
        return False
    head = store.read_head(obj.bucket, obj.name, obj.generation, DICOM_MAGIC_OFFSET + 4)
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def rejected_at_ingest(store: GcsStore, obj: ObjectInfo) -> bool:
    """True when the ingest function rejected this very generation (its record is beside it)."""
    metadata = store.object_metadata(obj.bucket, naming.output_name(obj.name, naming.REJECTION_SUFFIX))
    if not metadata or naming.MARKER_KEY not in metadata:
        return False
    uri, generation = naming.parse_source_marker(metadata.get(naming.SOURCE_KEY))
    return uri == naming.gs_uri(obj.bucket, obj.name) and generation == int(obj.generation)


def _bound(request: InferenceRequest) -> contextlib.AbstractContextManager[None]:
    return jsonlog.bind_upload(request)


def _process_logged(
    processor: Processor, request: InferenceRequest, delivery_attempt: int | None = None
) -> ProcessResult:
    with _bound(request):
        return processor.process(request, delivery_attempt)


def _bounded_map(items: Iterable[object], fn: Callable[[object], None], concurrency: int) -> None:
    """Run ``fn`` over a lazily listed stream with at most ~2x ``concurrency`` items in memory."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job") as pool:
        running: set[Future] = set()
        for item in items:
            running.add(pool.submit(fn, item))
            if len(running) >= 2 * concurrency:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
        for f in running:
            f.result()


def run_prefix(
    processor: Processor,
    store: GcsStore,
    uri: str,
    *,
    task_index: int = 0,
    task_count: int = 1,
    concurrency: int = 1,
    progress_every: int = 25,
) -> Summary:
    """Every DICOM object under the prefix, in this task's share (a stable hash of the name, so
    a retried task redoes only its share). Skipped: the pipeline's own outputs, objects the ingest
    function rejected at this generation, and results of this generation and model that the
    webhook accepted (a stored but undelivered result only has its webhook re-sent). Objects not
    named ``*.dcm`` count when their content type is DICOM or their bytes start with ``DICM``."""
    bucket, prefix = parse_gs_prefix(uri)
    summary = Summary()

    def candidates() -> Iterable[ObjectInfo]:
        for obj in store.list_objects(bucket, prefix):
            summary.add("listed")
            if shard_of(obj.name, task_count) != task_index:
                continue
            if naming.is_pipeline_output(obj.name, obj.metadata):
                summary.add("skipped_output")
                continue
            yield obj

    def handle(item: object) -> None:
        obj: ObjectInfo = item  # type: ignore[assignment]
        request = request_for_object(obj.bucket, obj.name, obj.generation, obj.size)
        # A backfilled object has no incoming context: one new trace per object.
        with _bound(request), tracing.root_span("job_object", None, correlation_id=request.correlation_id):
            try:
                if not looks_like_dicom(store, obj):
                    summary.add("skipped_not_dicom")
                    return
                if rejected_at_ingest(store, obj):
                    log(logger, logging.INFO, "skipped: rejected by the ingest function")
                    summary.add("skipped_rejected")
                    return
                stored = processor.existing_result(request)
                if processor.is_done(request, stored):
                    # Delivered: only its DICOM objects may still be missing from the store.
                    summary.add(
                        dicom_backfill.ensure_stored(processor.dicomweb, processor.outputs, request, stored)
                    )
                    return
            except Exception:  # noqa: BLE001 - a listing race or a storage hiccup: retry later
                logger.exception("cannot inspect object")
                summary.add(RequestOutcome.RETRY.value)
                return
            result = processor.process(request, stored=stored)
        summary.add(result.outcome.value)
        done = sum(summary.counts[o.value] for o in RequestOutcome)
        if done % progress_every == 0:
            log(logger, logging.INFO, "job progress", **summary.as_dict())

    log(logger, logging.INFO, "job started", mode="prefix", bucket=bucket, prefix=prefix,
        task_index=task_index, task_count=task_count, concurrency=concurrency)  # fmt: skip
    _bounded_map(candidates(), handle, concurrency)
    return summary


def subscription_path(subscription: str, project: str | None) -> str:
    """A bare subscription name (as a dead letter's replay command gives it) in the project."""
    if subscription.startswith("projects/") or not project:
        return subscription
    return f"projects/{project}/subscriptions/{subscription}"


def run_subscription(
    processor: Processor,
    subscription: str,
    *,
    concurrency: int = 1,
    max_messages: int | None = None,
    pull_size: int = 10,
    pull_timeout_s: float = 10.0,
    empty_pulls_to_stop: int = 2,
    subscriber: object | None = None,
) -> Summary:
    """Pull and process until the subscription is empty. A message is acknowledged only when
    its outcome would have earned a 2xx on the push endpoint; the others are handed back (ack
    deadline 0) at the end, so they are redelivered or dead-lettered exactly as with push."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    client = subscriber or pubsub_v1.SubscriberClient()
    summary = Summary()
    hand_back: list[str] = []
    seen_failed: set[str] = set()
    empty = 0
    log(logger, logging.INFO, "job started", mode="subscription", subscription=subscription,
        concurrency=concurrency)  # fmt: skip

    def handle(received: object) -> tuple[str, bool]:
        msg = received.message  # type: ignore[attr-defined]
        message = PubSubMessage(
            data=bytes(msg.data),
            attributes=dict(msg.attributes),
            message_id=msg.message_id,
            delivery_attempt=received.delivery_attempt or None,  # type: ignore[attr-defined]
        )
        try:
            request = parse_request(message)
        except MessageError as exc:
            log(logger, logging.ERROR, "unprocessable message; handing it back for dead-lettering",
                message_id=msg.message_id, reason=str(exc))  # fmt: skip
            summary.add(RequestOutcome.INVALID.value)
            return received.ack_id, False  # type: ignore[attr-defined]
        attempt = received.delivery_attempt or None  # type: ignore[attr-defined]
        incoming = tracing.incoming_context(
            [(tracing.PUBSUB_ATTRIBUTE, tracing.pubsub_traceparent(message.attributes))]
        )
        with (
            jsonlog.bind(message_id=msg.message_id, delivery_attempt=attempt),
            tracing.root_span("job_object", incoming, correlation_id=request.correlation_id),
        ):
            result = _process_logged(processor, request, attempt)
        summary.add(result.outcome.value)
        return received.ack_id, is_acked(result.outcome)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="drain") as pool:
        while max_messages is None or summary.counts["pulled"] < max_messages:
            want = (
                pull_size if max_messages is None else min(pull_size, max_messages - summary.counts["pulled"])
            )
            try:
                response = client.pull(
                    request={"subscription": subscription, "max_messages": want},
                    timeout=pull_timeout_s,
                    retry=None,
                )
                received = list(response.received_messages)
            except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
                received = []
            fresh = [r for r in received if r.message.message_id not in seen_failed]
            hand_back += [r.ack_id for r in received if r.message.message_id in seen_failed]
            if not fresh:
                empty += 1
                if empty >= empty_pulls_to_stop:
                    break
                continue
            empty = 0
            summary.add("pulled", len(fresh))
            client.modify_ack_deadline(
                request={
                    "subscription": subscription,
                    "ack_ids": [r.ack_id for r in fresh],
                    "ack_deadline_seconds": ACK_DEADLINE_S,
                }
            )
            by_ack = {r.ack_id: r for r in fresh}
            acks: list[str] = []
            for ack_id, ok in pool.map(handle, fresh):
                if ok:
                    acks.append(ack_id)
                else:
                    hand_back.append(ack_id)
                    seen_failed.add(by_ack[ack_id].message.message_id)
            if acks:
                client.acknowledge(request={"subscription": subscription, "ack_ids": acks})
    if hand_back:
        client.modify_ack_deadline(
            request={"subscription": subscription, "ack_ids": hand_back, "ack_deadline_seconds": 0}
        )
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpu_service.job", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prefix", help="gs://bucket/prefix to reprocess")
    mode.add_argument(
        "--subscription", help="projects/P/subscriptions/S (or S in GOOGLE_CLOUD_PROJECT) to drain"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="worker threads (default CONCURRENCY)")
    parser.add_argument("--task-index", type=int, default=int(os.environ.get("CLOUD_RUN_TASK_INDEX", "0")))
    parser.add_argument("--task-count", type=int, default=int(os.environ.get("CLOUD_RUN_TASK_COUNT", "1")))
    parser.add_argument("--max-messages", type=int, default=None, help="stop draining after this many")
    parser.add_argument("--progress-every", type=int, default=25)
    args = parser.parse_args(argv)
    if not 0 <= args.task_index < max(1, args.task_count):
        parser.error("task index must be in [0, task count)")
    return args


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = parse_args(argv)
    settings = settings or Settings.from_env()
    jsonlog.setup(settings.log_level)
    tracing.setup(settings.tracing, "inference-job", settings.project)
    concurrency = max(1, args.concurrency or settings.concurrency)
    # The processor's output pool is sized from settings.concurrency: the job's own thread count.
    settings = dataclasses.replace(settings, concurrency=concurrency)
    wired = build_processor(settings, load_warm_model(settings), batching=concurrency > 1)
    processor = wired.processor
    try:
        if args.prefix:
            summary = run_prefix(
                processor, processor.cloud_storage, args.prefix, task_index=args.task_index,
                task_count=args.task_count, concurrency=concurrency,
                progress_every=max(1, args.progress_every),
            )  # fmt: skip
        else:
            summary = run_subscription(
                processor,
                subscription_path(args.subscription, settings.project),
                concurrency=concurrency,
                max_messages=args.max_messages,
            )
    finally:
        wired.close()
        tracing.flush()
    log(logger, logging.INFO, "job finished", **summary.as_dict())
    return 1 if summary.to_retry else 0


if __name__ == "__main__":
    sys.exit(main())
