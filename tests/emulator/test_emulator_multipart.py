"""The streaming multipart parser, in process: any data, any read sizes, bounded memory."""

from __future__ import annotations

import io

import pytest
from hypothesis import assume, given, settings, strategies as st

from agavefs.emulator.multipart import MultipartError, parse, parse_params


def body_of(boundary: bytes, data: bytes, filename: bytes = b"f.bin", extra: bytes = b"") -> bytes:
    return (b"preamble\r\n--" + boundary + b"\r\nContent-Disposition: form-data; name=\"fileToUpload\"; filename=\""
            + filename + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + boundary
            + b"\r\nContent-Disposition: form-data; name=\"fileName\"\r\n\r\n" + extra + b"\r\n--" + boundary
            + b"--\r\n")


def run(body: bytes, boundary: str, chunk: int | None = None):
    out = io.BytesIO()
    stream = io.BytesIO(body)
    read = stream.read if chunk is None else (lambda n: stream.read(min(n, chunk)))
    form = parse(read, boundary, lambda name, fn: out if name == "fileToUpload" else None)
    return form, out.getvalue()


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 300),
       boundary=st.text(alphabet="abcdefXYZ0123456789-_", min_size=1, max_size=40),
       extra=st.text(max_size=30))
def test_roundtrip_any_data_any_chunking(data, chunk, boundary, extra):
    b = boundary.encode()
    assume(b"\r\n--" + b not in b"\r\n" + data + b"\r\n")  # a real client picks a boundary absent from the data
    form, got = run(body_of(b, data, extra=extra.encode()), boundary, chunk)
    assert got == data
    assert form.files["fileToUpload"] == ("f.bin", len(data))
    assert form.get("FILENAME") == extra


def test_large_body_streams_in_blocks():
    data = bytes(range(256)) * (12 << 12)  # 12 MiB
    reads = []
    stream = io.BytesIO(body_of(b"XyZ", data))

    def read(n):
        reads.append(n)
        return stream.read(n)

    out = io.BytesIO()
    parse(read, "XyZ", lambda name, fn: out)
    assert out.getvalue() == data and max(reads) <= 1 << 20


@pytest.mark.parametrize("body", [
    b"", b"no boundary here", b"--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nunterminated",
    b"--B\r\n\r\nno disposition\r\n--B--", b"--B\r\nContent-Disposition: attachment\r\n\r\nx\r\n--B--",
    b"--Bjunk", b"--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n\xff\xfe\r\n--B--",
    b"--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + b"x" * 70000 + b"\r\n--B--",
    b"--B\r\n" + b"X-Long: " + b"y" * 20000 + b"\r\n\r\nx\r\n--B--",
    b"".join(b"--B\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(70)) + b"--B--",
])
def test_malformed_bodies_raise(body):
    with pytest.raises(MultipartError):
        run(body, "B")


def test_parse_params():
    assert parse_params('form-data; name="a;b"; filename="x\\"y"') == ("form-data", {"name": "a;b", "filename": 'x"y'})
    assert parse_params("form-data; name=a; filename*=UTF-8''%C3%BCber.txt; filename=\"u.txt\"")[1]["filename"] == "über.txt"
    assert parse_params("multipart/form-data; boundary=----x")[1] == {"boundary": "----x"}
    # browsers send Windows paths unescaped; only \" and \\ are escapes
    assert parse_params('form-data; name="f"; filename="C:\\temp\\x.txt"')[1]["filename"] == "C:\\temp\\x.txt"
    assert parse_params('form-data; name="f"; filename="a\\\\b"')[1]["filename"] == "a\\b"
    with pytest.raises(MultipartError):
        parse_params("form-data; filename*=nope''%FF")
