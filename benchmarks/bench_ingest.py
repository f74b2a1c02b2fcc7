"""Cost of one ingest event: header-only ranged reads vs downloading the whole object.

Starts its own fake-gcs-server, uploads a small real DICOM (pydicom's CT_small.dcm),
a 50 MB radiograph-sized one, the same kind of image deflated (Deflated Explicit VR
Little Endian, 2048 x 2048, about 6 MB: inflated incrementally, never as a whole) and
one whose header is longer than the first range (an undefined-length sequence of
3000 items before Pixel Data), then measures side by side, in one run:

- header-only: what ``ingest_dicom`` does per event (ranged reads at the event's
  generation, header parse, policy check, message body), without the Pub/Sub publish,
  which costs the same in both paths;
- dcmread + Blob.open: pydicom's own ``dcmread(stop_before_pixels=True, defer_size=4096)``
  over google-cloud-storage's ``Blob.open("rb", chunk_size=64 KiB)`` (tried earlier in
  place of the function's own sparse file). Same bytes and requests within one byte per
  request on plain files, but a deflated file is read whole, pixels included (pydicom
  inflates the rest of the object at once): not adopted;
- naive: ``download_as_bytes()`` of the whole object and ``pydicom.dcmread`` on it,
  then the same fields.

Prints bytes read against object size and the median latency per event.

    .venv/bin/python benchmarks/bench_ingest.py [--repeat 30] [--naive-repeat 7]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_ingest import header as hdr
from dicom_ingest import ingest_policy, message
from dicom_ingest.reader import RangedReader
from dicom_ingest.settings import IMAGE_MODALITIES
from infra.local.emulators import FakeGcsServer

ROOT = Path(__file__).resolve().parents[1]

INITIAL, MAXIMUM = 64 * 1024, 1024 * 1024


def radiograph(size: int = 5000, *, deflated: bool = False, long_header: bool = False) -> bytes:
    """A 16-bit DX image of noise (5000 x 5000: 50 MB of Pixel Data, like a large chest radiograph)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.BodyPartExamined, ds.ViewPosition = "DX", "BENCH-1", "CHEST", "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if deflated:
        meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    if long_header:  # ~300 kB of items, undefined lengths as many modalities write them
        items = []
        for i in range(3000):
            item = Dataset()
            item.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i}"
            item.is_undefined_length_sequence_item = True
            items.append(item)
        ds.ReferencedImageSequence = Sequence(items)
        ds["ReferencedImageSequence"].is_undefined_length = True
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def header_only(client, bucket: str, name: str, generation: str, size: int) -> tuple[int, int]:
    reader = RangedReader(client, bucket, name, generation)
    read = hdr.read_header(reader.fetch, size, initial_bytes=INITIAL, max_bytes=MAXIMUM)
    assert isinstance(read.result, hdr.DicomHeader), read.result
    assert ingest_policy.check(read.result, IMAGE_MODALITIES, 64 << 20) is None
    upload = message.Upload(bucket, name, generation, size, "application/dicom", "bench", None)
    message.inference_request(upload, read.result)
    return reader.bytes_read, reader.requests


class CountingFile(io.RawIOBase):
    """A file over ``Blob.open("rb")`` that counts what pydicom reads and notices a short read."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self.raw = raw
        self.read_bytes = 0
        self.truncated = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.read_bytes += len(data)
        if n is not None and n > 0 and len(data) < n:
            self.truncated = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def dcmread_blob_open(client, bucket: str, name: str, generation: str, size: int) -> tuple[int, int]:
    """The rejected experiment: pydicom's own header read over google-cloud-storage's BlobReader."""
    blob = client.bucket(bucket).blob(name, generation=int(generation))
    # The size from the event, as the function has it; without it BlobReader.seek reloads the
    # metadata (one more request, counted below if it happens).
    blob._properties["size"] = str(size)
    fetched = {"bytes": 0, "requests": 0}
    download = blob.download_as_bytes

    def counting_download(*args, **kwargs):
        data = download(*args, **kwargs)
        fetched["bytes"] += len(data)
        fetched["requests"] += 1
        return data

    blob.download_as_bytes = counting_download
    reload = blob.reload

    def counting_reload(*args, **kwargs):
        fetched["requests"] += 1
        return reload(*args, **kwargs)

    blob.reload = counting_reload
    with blob.open("rb", chunk_size=INITIAL) as raw:
        fp = CountingFile(raw)
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=4096)
        _ = (ds.Modality, ds.Rows, ds.Columns, ds.get("PatientID"), ds.SOPInstanceUID)
    return fetched["bytes"], fetched["requests"]


def naive(client, bucket: str, name: str, generation: str, size: int) -> tuple[int, int]:
    data = client.bucket(bucket).blob(name, generation=int(generation)).download_as_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    _ = (ds.Modality, ds.Rows, ds.Columns, ds.get("PatientID"), ds.SOPInstanceUID)
    return len(data), 1


def measure(fn, repeat: int, *args) -> tuple[int, int, list[float]]:
    fn(*args)  # warm the connection pool
    times, nbytes, requests = [], 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        nbytes, requests = fn(*args)
        times.append((time.perf_counter() - t0) * 1000)
    return nbytes, requests, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="events per object, header-only path")
    parser.add_argument("--naive-repeat", type=int, default=7, help="events per object, naive path")
    args = parser.parse_args()

    server = FakeGcsServer().start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
    try:
        from google.cloud import storage

        client = storage.Client(project="bench-project")
        bucket = "bench-ingest"
        server.create_bucket(bucket)
        objects = {
            "CT_small.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
            "chest-50mb.dcm": radiograph(),
            "deflated-6mb.dcm": radiograph(2048, deflated=True),
            "long-header.dcm": radiograph(2048, long_header=True),
        }
        rows = []
        for name, data in objects.items():
            blob = client.bucket(bucket).blob(name)
            blob.upload_from_string(data, content_type="application/dicom")
            gen, size = str(blob.generation), len(data)
            for label, fn, repeat in (
                ("header-only", header_only, args.repeat),
                ("dcmread + Blob.open", dcmread_blob_open, args.repeat),
                ("naive full download", naive, args.naive_repeat),
            ):
                nbytes, requests, times = measure(fn, repeat, client, bucket, name, gen, size)
                rows.append((name, size, label, nbytes, requests, statistics.median(times), repeat))
    finally:
        server.stop()

    print(f"fake-gcs-server on loopback, initial range {INITIAL} B, header budget {MAXIMUM} B")
    print(
        f"{'object':<18}{'size (B)':>12}  {'path':<21}{'bytes read':>12}{'of size':>10}{'requests':>10}"
        f"{'median ms/event':>17}{'events':>8}"
    )
    for name, size, label, nbytes, requests, median, repeat in rows:
        print(
            f"{name:<18}{size:>12,}  {label:<21}{nbytes:>12,}{nbytes / size:>10.3%}{requests:>10}"
            f"{median:>17.2f}{repeat:>8}"
        )
    for name in objects:
        h = next(r for r in rows if r[0] == name and r[2] == "header-only")
        n = next(r for r in rows if r[0] == name and r[2] == "naive full download")
        print(
            f"{name}: header-only reads {n[3] / h[3]:.0f}x fewer bytes and is "
            f"{n[5] / h[5]:.1f}x faster per event (median)"
        )
    for name in objects:
        h = next(r for r in rows if r[0] == name and r[2] == "header-only")
        d = next(r for r in rows if r[0] == name and r[2] == "dcmread + Blob.open")
        worse = d[3] > h[3] or d[4] > h[4]
        print(
            f"{name}: dcmread + Blob.open reads {d[3]:,} B in {d[4]} requests, header-only {h[3]:,} B "
            f"in {h[4]}: {'worse' if worse else 'no worse'}"
        )


if __name__ == "__main__":
    main()
