import json

import pytest

from pipeline_common import naming


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b/img.dcm", "a/b/img"),
        ("IMG.DCM", "IMG"),
        ("x.Dcm", "x"),
        ("noext", "noext"),
        ("a.dcm.bak", "a.dcm.bak"),
    ],
)
def test_stem_strips_only_trailing_dcm(name, expected):
    assert naming.stem(name) == expected


def test_output_name_with_prefix():
    assert naming.output_name("a/img.dcm", naming.MASK_SUFFIX) == "a/img.lime.png"
    assert naming.output_name("a/img.dcm", naming.RESULT_SUFFIX, prefix="out/") == "out/a/img.result.json"


def test_loop_guard_by_suffix_and_marker():
    assert naming.is_pipeline_output("a/img.lime.png", None)
    assert naming.is_pipeline_output("a/img.REJECTED.json", {})
    assert naming.is_pipeline_output("a/img.dcm", {naming.MARKER_KEY: "result"})
    assert not naming.is_pipeline_output("a/img.dcm", {"other": "x"})


def test_the_review_components_outputs_are_never_ingested():
    """Per decision STEM.<review_id>.review.sr.dcm / .review.seg.dcm, and STEM.review.json."""
    review_id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    for suffix in (naming.REVIEW_SR_SUFFIX, naming.REVIEW_SEG_SUFFIX):
        name = naming.output_name("a/img.dcm", naming.review_suffix(review_id, suffix))
        assert name == f"a/img.{review_id}{suffix}"
        assert naming.is_pipeline_output(name, None)
    assert naming.is_pipeline_output(naming.output_name("a/img.dcm", naming.REVIEW_SUFFIX), None)


def test_correlation_id_is_stable_per_generation():
    a = naming.correlation_id("b", "n.dcm", "1")
    assert a == naming.correlation_id("b", "n.dcm", 1)
    assert a != naming.correlation_id("b", "n.dcm", "2")


def test_emulators_round_trip(pubsub_emulator, gcs_server, bucket_name):
    """The shared fixtures start real emulators that the client libraries reach."""
    from google.cloud import storage

    from infra.local.emulators import create_subscription, create_topic, pull

    client = storage.Client(project="test-project")
    client.bucket(bucket_name).blob("x.txt").upload_from_string(b"hello")
    assert client.bucket(bucket_name).blob("x.txt").download_as_bytes() == b"hello"
    create_topic(pubsub_emulator.host, "test-project", "t-roundtrip")
    create_subscription(pubsub_emulator.host, "test-project", "s-roundtrip", "t-roundtrip")
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    publisher.publish("projects/test-project/topics/t-roundtrip", b"payload", k="v").result(timeout=30)
    messages = pull(pubsub_emulator.host, "test-project", "s-roundtrip")
    assert [m["attributes"] for m in messages] == [{"k": "v"}]


def _log_exception(exc_factory) -> dict:
    import io
    import json
    import logging

    from pipeline_common.jsonlog import CloudLoggingFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    logger = logging.getLogger("test.jsonlog.exceptions")
    logger.propagate = False
    logger.handlers = [handler]
    try:
        exc_factory()
    except Exception:
        logger.exception("failed")
    return json.loads(stream.getvalue())


def test_stack_trace_withholds_messages_raised_inside_pydicom():
    import pydicom

    from pipeline_common.jsonlog import WITHHELD

    phi = "".join(["DOE", "^JOHN-", "19700101"])  # built at run time: source lines are in traces

    def bad():
        pydicom.valuerep.validate_value("DA", phi, pydicom.config.RAISE)  # quotes the value

    entry = _log_exception(bad)
    assert phi not in json.dumps(entry)
    assert WITHHELD in entry["stack_trace"]
    assert entry["stack_trace"].startswith("Traceback (most recent call last):")
    assert "in bad" in entry["stack_trace"]  # frames are kept for Error Reporting


def test_stack_trace_keeps_messages_of_our_own_exceptions():
    def ours():
        raise RuntimeError("storage answered 503 for gs://bucket/path/img.dcm")

    entry = _log_exception(ours)
    assert "storage answered 503 for gs://bucket/path/img.dcm" in entry["stack_trace"]


@pytest.mark.parametrize("suffix", naming.OUTPUT_SUFFIXES)
def test_outputs_of_a_name_near_the_limit_fit_and_stay_apart(suffix):
    """Cloud Storage takes names up to 1024 bytes; an output of such a name must still be writable."""
    folder = "wards/응급실 A/"  # multi-byte characters, so the cut falls inside one
    name = folder + "환" * ((naming.MAX_NAME_BYTES - len(folder.encode()) - 4) // 3) + ".dcm"
    other = name[:-5] + "자.dcm"
    assert len(name.encode()) <= naming.MAX_NAME_BYTES
    out = naming.output_name(name, suffix)
    assert len(out.encode()) <= naming.MAX_NAME_BYTES
    assert out.endswith(suffix) and out.startswith(folder)
    out.encode().decode("utf-8")  # no half character
    assert out == naming.output_name(name, suffix)
    assert out != naming.output_name(other, suffix)
    assert naming.is_pipeline_output(out, None)


def test_names_with_room_keep_their_exact_stem():
    name = "wards/응급실 A/환자 01#1?x[2]*%20+.DCM"
    assert naming.output_name(name, naming.MASK_SUFFIX) == "wards/응급실 A/환자 01#1?x[2]*%20+.lime.png"
    longest_fitting = "a" * (naming.MAX_NAME_BYTES - len(naming.REJECTION_SUFFIX)) + ".dcm"
    assert (
        naming.output_name(longest_fitting, naming.REJECTION_SUFFIX)
        == longest_fitting[:-4] + ".rejected.json"
    )


def test_source_marker_round_trips_and_rejects_what_is_not_one() -> None:
    marker = naming.source_marker("b", "dir/x#1.dcm", 42)
    assert marker == "gs://b/dir/x#1.dcm#42"
    assert naming.parse_source_marker(marker) == ("gs://b/dir/x#1.dcm", 42)
    assert naming.parse_source_marker(None) == ("", None)
    assert naming.parse_source_marker("gs://b/x.dcm") == ("gs://b/x.dcm", None)
    assert naming.parse_source_marker("gs://b/x.dcm#abc") == ("gs://b/x.dcm#abc", None)


def test_relation_of_an_existing_output_to_the_upload() -> None:
    from pipeline_common.write_outcome import Relation, relation

    uri = "gs://b/x.dcm"

    def of(metadata: dict[str, str], generation: int = 5) -> Relation:
        return relation(metadata, uri, generation, naming.MARKER_KEY)

    ours = {naming.MARKER_KEY: "result"}
    assert of({naming.SOURCE_KEY: f"{uri}#5"}) is Relation.FOREIGN  # no marker: never ours
    assert of({**ours, naming.SOURCE_KEY: "gs://b/x.DCM#5"}) is Relation.OTHER_UPLOAD
    assert of(ours) is Relation.UNKNOWN_GENERATION
    assert of({**ours, naming.SOURCE_KEY: f"{uri}#4"}) is Relation.OLDER
    assert of({**ours, naming.SOURCE_KEY: f"{uri}#5"}) is Relation.SAME
    assert of({**ours, naming.SOURCE_KEY: f"{uri}#6"}) is Relation.NEWER


def test_one_rfc3339_format() -> None:
    from datetime import UTC, datetime

    from pipeline_common.timefmt import rfc3339

    assert rfc3339(datetime(2024, 1, 31, 12, 0, tzinfo=UTC)) == "2024-01-31T12:00:00Z"
    assert datetime.fromisoformat(rfc3339()).tzinfo is not None
