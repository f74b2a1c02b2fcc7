"""STOW-RS against a real Orthanc with its DICOMweb plugin (infra/local/orthanc.py), and the service's
acknowledgement rules around it: stored before the record, store down -> redelivery, store
refusing the objects -> a ``failed`` record that says why."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.dicomweb_store import (
    DUPLICATE_SOP_INSTANCE,
    DicomWebStore,
    StoreRejected,
    StoreUnavailable,
    _check_failed,
)
from gpu_service.dicom.objects import HEATMAP, SEG, SR, Algorithm, Finding
from infra.local import orthanc
from infra.local.emulators import free_port, stop_process_group, wait_http
from pipeline_common import naming
from tests.gpu_service.pipeline.test_processing import _stats, make_app, model  # noqa: F401 - fixtures
from tests.support.service import WebhookServer, dicom_bytes, envelope, read_object, request_body, upload

pytestmark = pytest.mark.slow  # starts servers

REFUSED_PREFIX = "2.25.4242."


@pytest.fixture(scope="module")
def orthanc_url(tmp_path_factory) -> Iterator[str]:
    if orthanc.missing():
        pytest.fail(orthanc.missing())
    workdir = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = orthanc.write_config(Path(workdir), port, refuse_study_prefix=REFUSED_PREFIX)
    log = Path(workdir) / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            orthanc.command(config), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/system", 60, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc.pid)


def objects_for(study_uid: str | None = None, key: str = "b/n.dcm#1") -> dict[str, Dataset]:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(size=64)))
    if study_uid:
        ds.StudyInstanceUID = study_uid
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:20, 10:30] = True
    built = dicom_objects.build_objects(
        ds, mask, Finding(["normal", "nodule"], [0.2, 0.8], 1), Algorithm("m", "1", "cd" * 32), key
    )
    assert built.absent == {}
    return built.objects


def refused_source(seed: int) -> bytes:
    """A source whose study the test Orthanc refuses (403)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=seed)))
    ds.StudyInstanceUID = REFUSED_PREFIX + str(seed)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def count_stow_calls(app: Any) -> list[int]:
    """Counts the STOW-RS requests of the app's real DICOMweb store (the list's one item)."""
    store = app.extensions["gpu_service"].processor.dicomweb
    calls = [0]
    real = store.store

    def store_counted(datasets: Any) -> Any:
        calls[0] += 1
        return real(datasets)

    store.store = store_counted
    return calls


def qido_instances(base: str, study_uid: str) -> list[dict[str, Any]]:
    client = DICOMwebClient(base + orthanc.DICOMWEB_ROOT)
    return client.search_for_instances(study_instance_uid=study_uid)


def test_store_then_store_again_is_idempotent(orthanc_url: str) -> None:
    objects = objects_for()
    store = DicomWebStore(orthanc_url + orthanc.DICOMWEB_ROOT)
    first = store.store(list(objects.values()))
    second = store.store(list(objects.values()))
    assert first.sop_instance_uids == second.sop_instance_uids
    study = str(objects[SEG].StudyInstanceUID)
    found = qido_instances(orthanc_url, study)
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(
        str(o.SOPInstanceUID) for o in objects.values()
    )


def test_refused_objects_are_permanent_and_a_store_down_is_transient(orthanc_url: str) -> None:
    objects = objects_for(REFUSED_PREFIX + "1", key="refused")
    with pytest.raises(StoreRejected) as refused:
        DicomWebStore(orthanc_url + orthanc.DICOMWEB_ROOT).store(list(objects.values()))
    assert refused.value.status == 403
    assert not qido_instances(orthanc_url, REFUSED_PREFIX + "1")
    down = DicomWebStore(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    with pytest.raises(StoreUnavailable) as unavailable:
        down.store(list(objects_for().values()))
    assert isinstance(unavailable.value, OSError)  # processing treats OSError as transient


def test_failed_sop_items_duplicates_succeed_others_refuse() -> None:
    def answer(*reasons: int) -> Dataset:
        ds = Dataset()
        items = []
        for reason in reasons:
            item = Dataset()
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
        return ds

    assert _check_failed(answer()) is False
    assert _check_failed(answer(DUPLICATE_SOP_INSTANCE, DUPLICATE_SOP_INSTANCE)) is True
    with pytest.raises(StoreRejected, match="0xC000"):
        _check_failed(answer(DUPLICATE_SOP_INSTANCE, 0xC000))
    with pytest.raises(StoreUnavailable):
        _check_failed(answer(0xA700))


def test_completed_result_is_stored_in_the_source_study_before_its_record(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    app = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)
    blob = upload(bucket_name, "pacs/chest.dcm", dicom_bytes(seed=21))
    response = app.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200, response.get_json()
    record = json.loads(webhook.accepted()[0].body)
    dicom = record["dicom"]
    assert dicom["absent"] == {}
    assert dicom["seg_uri"] == f"gs://{bucket_name}/pacs/chest{naming.SEG_SUFFIX}"
    assert dicom["sr_uri"] == f"gs://{bucket_name}/pacs/chest{naming.SR_SUFFIX}"
    assert dicom["study_instance_uid"] == record["study_instance_uid"]
    # (with a weight map from the explanation, the heat-map SEG is stored too)
    assert dicom["dicomweb"]["stored"] == sorted(dicom["sop_instance_uids"]) and {SEG, SR} <= set(
        dicom["sop_instance_uids"]
    )
    for role, suffix in ((SEG, naming.SEG_SUFFIX), (SR, naming.SR_SUFFIX)):
        data, metadata = read_object(bucket_name, f"pacs/chest{suffix}")
        stored = pydicom.dcmread(io.BytesIO(data))
        assert stored.SOPInstanceUID == dicom["sop_instance_uids"][role]
        assert metadata[naming.MARKER_KEY] == role
    found = qido_instances(orthanc_url, record["study_instance_uid"])
    assert {i["00080018"]["Value"][0] for i in found} == set(dicom["sop_instance_uids"].values())
    # The heat-map SEG (four BINARY bands, docs/contracts.md): Orthanc keeps it as sent.
    heat_bytes = read_object(bucket_name, f"pacs/chest{naming.HEATMAP_SEG_SUFFIX}")[0]
    (hit,) = requests.post(
        f"{orthanc_url}/tools/lookup", data=dicom["sop_instance_uids"][HEATMAP], timeout=10
    ).json()
    assert requests.get(f"{orthanc_url}/instances/{hit['ID']}/file", timeout=30).content == heat_bytes
    heat = pydicom.dcmread(io.BytesIO(heat_bytes))
    assert heat.SegmentationType == "BINARY" and len(heat.SegmentSequence) == 4 and heat.pixel_array.any()
    seg = pydicom.dcmread(io.BytesIO(read_object(bucket_name, "pacs/chest.seg.dcm")[0]))
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == record["sop_instance_uid"]
    )
    assert "dicom" in record["timings_ms"] and "dicomweb" in record["timings_ms"]  # build+write, STOW
    # The upload's correlation id travels into the objects (algorithm parameters of SEG and SR).
    assert (
        f"correlation_id={record['correlation_id']}"
        in seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    )
    sr_bytes = read_object(bucket_name, "pacs/chest.sr.dcm")[0]
    assert record["correlation_id"].encode() in sr_bytes


def test_store_down_is_redelivered_and_a_refusal_is_a_failed_record(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    down = make_app(dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", dicomweb_timeout_s=2)
    blob = upload(bucket_name, "pacs/down.dcm", dicom_bytes(seed=22))
    response = down.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 503 and response.get_json()["outcome"] == "retry"
    assert read_object(bucket_name, "pacs/down.result.json") is None  # nothing claims the objects
    assert webhook.accepted() == [] and _stats(down).inferences == 1
    # The record already built is staged for the redelivery; it claims nothing stored.
    staged_body, staged_meta = read_object(bucket_name, "pacs/down" + naming.PENDING_SUFFIX)
    staged = json.loads(staged_body)
    assert staged_meta[naming.MARKER_KEY] == "pending" and staged["status"] == "completed"
    assert staged["dicom"]["dicomweb"]["stored"] == []

    up = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)
    stow_calls = count_stow_calls(up)
    response = up.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"
    (hook,) = webhook.accepted()
    record = json.loads(hook.body)
    assert {SEG, SR} <= set(record["dicom"]["dicomweb"]["stored"])
    # The redelivery stored the staged objects: no model call, no LIME, one STOW-RS, one webhook.
    assert _stats(up).inferences == 0 and _stats(up).staged_resumed == 1 and stow_calls == [1]
    assert record["prediction"] == staged["prediction"] and record["explanation"] == staged["explanation"]
    uids = record["dicom"]["sop_instance_uids"]
    assert uids == staged["dicom"]["sop_instance_uids"]
    found = [i["00080018"]["Value"][0] for i in qido_instances(orthanc_url, record["study_instance_uid"])]
    assert sorted(found) == sorted(uids.values())  # each object exactly once
    assert json.loads(read_object(bucket_name, "pacs/down.result.json")[0]) == record
    response = up.test_client().post("/", json=envelope(request_body(blob)))
    assert response.get_json()["outcome"] == "duplicate" and len(webhook.accepted()) == 1
    assert stow_calls == [1] and _stats(up).inferences == 0

    # A store that refuses the staged objects on the redelivery: a failed record, still no recompute.
    refused_first = upload(bucket_name, "pacs/refused-later.dcm", refused_source(24))
    response = down.test_client().post("/", json=envelope(request_body(refused_first)))
    assert response.status_code == 503 and read_object(bucket_name, "pacs/refused-later.pending.json")
    response = up.test_client().post("/", json=envelope(request_body(refused_first)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "failed"
    record = json.loads(webhook.accepted()[-1].body)
    assert record["status"] == "failed" and record["error"]["code"] == "dicomweb_rejected"
    assert "403" in record["error"]["message"] and "dicom" not in record
    assert _stats(up).inferences == 0 and _stats(up).staged_resumed == 2 and stow_calls == [2]
    assert len(webhook.accepted()) == 2

    refused = upload(bucket_name, "pacs/refused.dcm", refused_source(23))
    response = up.test_client().post("/", json=envelope(request_body(refused)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "failed"
    record = json.loads(webhook.accepted()[-1].body)
    assert record["status"] == "failed" and record["error"]["code"] == "dicomweb_rejected"
    assert "403" in record["error"]["message"]
    assert "dicom" not in record
    assert requests.get(orthanc_url + "/studies", timeout=10).status_code == 200


def test_a_staged_result_of_an_older_generation_is_recomputed_for_the_newer_one(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    down = make_app(dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", dicomweb_timeout_s=2)
    old = upload(bucket_name, "pacs/regen.dcm", dicom_bytes(seed=25))
    assert down.test_client().post("/", json=envelope(request_body(old))).status_code == 503
    assert read_object(bucket_name, "pacs/regen.pending.json") is not None
    new = upload(bucket_name, "pacs/regen.dcm", dicom_bytes(seed=26))
    up = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)
    response = up.test_client().post("/", json=envelope(request_body(new)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"
    assert _stats(up).inferences == 1 and _stats(up).staged_resumed == 0
    record = json.loads(webhook.accepted()[-1].body)
    assert record["source"]["generation"] == str(new.generation)
    # The older generation's redelivery finds the newer result: nothing is stored for it.
    response = up.test_client().post("/", json=envelope(request_body(old)))
    assert response.get_json()["outcome"] == "superseded" and _stats(up).staged_resumed == 0


def test_concurrent_redeliveries_of_a_staged_result_commit_one_record(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    down = make_app(dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", dicomweb_timeout_s=2)
    blob = upload(bucket_name, "pacs/twins.dcm", dicom_bytes(seed=27))
    assert down.test_client().post("/", json=envelope(request_body(blob))).status_code == 503
    up = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)

    def deliver(_: int) -> Any:
        return up.test_client().post("/", json=envelope(request_body(blob)))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(deliver, range(4)))
    assert all(a.status_code == 200 for a in answers), [a.get_json() for a in answers]
    assert {a.get_json()["outcome"] for a in answers} <= {"completed", "duplicate"}
    assert _stats(up).inferences == 0 and _stats(up).staged_resumed >= 1
    body, metadata = read_object(bucket_name, "pacs/twins.result.json")
    hooks = webhook.accepted()
    # Twins may each send the webhook (same body, same idempotency key): Django keeps one row.
    assert hooks and all(h.body == body for h in hooks) and naming.DELIVERED_KEY in metadata
    record = json.loads(body)
    found = [i["00080018"]["Value"][0] for i in qido_instances(orthanc_url, record["study_instance_uid"])]
    assert sorted(found) == sorted(record["dicom"]["sop_instance_uids"].values())


def test_backfill_job_stores_delivered_results_objects_once_without_recomputing(
    model: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    from gpu_service import job
    from gpu_service.pipeline.processing import Processor
    from gpu_service.settings import Settings
    from gpu_service.wiring import make_cloud_storage, make_dicomweb_store, make_webhook
    from tests.support.service import SECRET, count_work

    def processor(**overrides: Any) -> Processor:
        settings = Settings(
            project="test-project",
            webhook_url=webhook.url,
            webhook_secret=SECRET,
            lime_num_samples=48,
            lime_batch_size=24,
            **overrides,
        )
        return Processor(
            settings,
            model,
            make_cloud_storage(settings),
            make_webhook(settings),
            make_dicomweb_store(settings),
        )

    for seed in (41, 42):
        upload(bucket_name, f"backfill/img{seed}.dcm", dicom_bytes(seed=seed))
    prefix = f"gs://{bucket_name}/backfill"
    without_store = processor()
    assert job.run_prefix(without_store, without_store.cloud_storage, prefix).as_dict()["completed"] == 2

    with_store = processor(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)
    work = count_work(with_store)
    counts = job.run_prefix(with_store, with_store.cloud_storage, prefix).as_dict()
    assert counts.get("dicom_stored") == 2 and "completed" not in counts
    assert work.inferences == 0 and len(webhook.accepted()) == 2
    for seed in (41, 42):
        record = json.loads(read_object(bucket_name, f"backfill/img{seed}.result.json")[0])
        held = {i["00080018"]["Value"][0] for i in qido_instances(orthanc_url, record["study_instance_uid"])}
        assert held == set(record["dicom"]["sop_instance_uids"].values())

    again = job.run_prefix(with_store, with_store.cloud_storage, prefix).as_dict()
    assert again.get("skipped_done") == 2 and "dicom_stored" not in again


def test_every_pydicom_test_file_gets_stored_objects_or_reasons_never_a_false_claim(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
) -> None:
    """Odd sources through the whole service (RGB, palette, multi-frame, big endian, odd sizes, no
    study): each completed record's ``dicom`` block names only objects written and stored."""
    import warnings

    from pydicom.data import get_testdata_files

    app = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT, lime_num_samples=8, lime_batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = sorted(p for p in get_testdata_files("*.dcm") if Path(p).is_file())
    outcomes: dict[str, int] = {}
    for i, path in enumerate(paths):
        name = f"odd/{i:03d}-{Path(path).name}"
        blob = upload(bucket_name, name, Path(path).read_bytes())
        answer = app.test_client().post("/", json=envelope(request_body(blob), message_id=str(i)))
        outcome = answer.get_json()["outcome"]
        assert outcome in ("completed", "failed"), (path, answer.get_json())
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        record = json.loads(read_object(bucket_name, naming.output_name(name, naming.RESULT_SUFFIX))[0])
        if record["status"] != "completed":
            assert "dicom" not in record, path
            assert record["error"]["code"] != "dicomweb_rejected", (path, record["error"])  # valid objects
            continue
        dicom = record["dicom"]
        uids = dicom["sop_instance_uids"]
        for role, suffix in ((SEG, naming.SEG_SUFFIX), (SR, naming.SR_SUFFIX)):
            uri = dicom[f"{role}_uri"]
            assert (role in uids) == (uri is not None) != (role in dicom["absent"]), (path, dicom)
            if uri is None:
                continue
            stored = read_object(bucket_name, naming.output_name(name, suffix))
            assert stored is not None and pydicom.dcmread(io.BytesIO(stored[0])).SOPInstanceUID == uids[role]
        if uids:
            held = {
                i["00080018"]["Value"][0] for i in qido_instances(orthanc_url, dicom["study_instance_uid"])
            }
            assert set(uids.values()) <= held, path
    assert outcomes.get("completed", 0) >= 40, outcomes


def test_settings_read_the_dicomweb_variables() -> None:
    from gpu_service.settings import Settings

    settings = Settings.from_env({"DICOMWEB_URL": "https://store/dicomWeb", "DICOMWEB_AUTH": "google"})
    assert (settings.dicom_objects, settings.dicomweb_url, settings.dicomweb_auth) == (
        True,
        "https://store/dicomWeb",
        "google",
    )
    assert Settings.from_env({}).dicomweb_url is None
    assert Settings.from_env({"DICOM_OBJECTS": "false"}).dicom_objects is False
    with pytest.raises(ValueError, match="DICOMWEB_AUTH"):
        Settings.from_env({"DICOMWEB_AUTH": "basic"})


def test_a_weight_map_on_the_explanation_becomes_a_stored_heatmap_seg(orthanc_url: str) -> None:
    """The explanation's ``pixel_weights`` (signed, in [-1, 1], the mask's shape) is picked up
    as is: a third object, written and stored with the other two, named in the record."""
    from types import SimpleNamespace

    from gpu_service.dicom import result_objects as dicom_outputs
    from pipeline_common.write_outcome import WriteOutcome, WriteResult

    source = pydicom.dcmread(io.BytesIO(dicom_bytes(size=64, seed=51)))
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:24, 8:24] = True
    weights = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    explanation = SimpleNamespace(
        mask=mask, label_index=1, params={"num_samples": 100, "seed": 0}, pixel_weights=weights
    )
    model_info = SimpleNamespace(name="m", version="1", sha256="ef" * 32, labels=["normal", "nodule"])
    written: dict[str, bytes] = {}

    def write(suffix: str, role: str, data: bytes, content_type: str) -> WriteResult:
        written[suffix] = data
        return WriteResult(WriteOutcome.CREATED, 1)

    store = DicomWebStore(orthanc_url + orthanc.DICOMWEB_ROOT)
    objects = dicom_outputs.write_result_objects(
        source=source,
        explanation=explanation,
        probs=np.array([0.3, 0.7]),
        model=model_info,
        dedup_key="b/heat.dcm#1",
        frame_index=0,
        write=write,
        uri=lambda suffix: "gs://b/heat" + suffix,
        dicomweb_url=store.url,
    )
    dicom_outputs.mark_stored(objects.section, store.store(objects.datasets).already_present)
    section = objects.section
    assert set(written) == {naming.SEG_SUFFIX, naming.SR_SUFFIX, naming.HEATMAP_SEG_SUFFIX}
    assert section["heatmap_uri"] == "gs://b/heat" + naming.HEATMAP_SEG_SUFFIX
    assert section["dicomweb"]["stored"] == ["heatmap", SEG, SR]
    heat = pydicom.dcmread(io.BytesIO(written[naming.HEATMAP_SEG_SUFFIX]))
    assert (
        heat.SegmentationType == "BINARY"
        and len(heat.SegmentSequence) == 4
        and heat.SOPInstanceUID == section["sop_instance_uids"]["heatmap"]
    )
    held = {i["00080018"]["Value"][0] for i in qido_instances(orthanc_url, str(source.StudyInstanceUID))}
    assert held == set(section["sop_instance_uids"].values())


def test_google_auth_uses_application_default_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DICOMWEB_AUTH=google``: the session carries ADC (here anonymous ones, as no account exists)."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    from gpu_service.dicom.dicomweb_store import GOOGLE_SCOPES, make_session

    asked: list[Any] = []

    def default(scopes: Any = None) -> tuple[AnonymousCredentials, str]:
        asked.append(scopes)
        return AnonymousCredentials(), "test-project"

    monkeypatch.setattr(google.auth, "default", default)
    session = make_session("google", 5)
    assert isinstance(session, AuthorizedSession) and asked == [list(GOOGLE_SCOPES)]
    assert not isinstance(make_session("none", 5), AuthorizedSession)
    with pytest.raises(ValueError, match="DICOMWEB_AUTH"):
        make_session("basic", 5)
