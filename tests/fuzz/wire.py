"""Frames by hand for the fuzz targets: raw headers, a byte-string socket, and a strategy of
frames built field by field and then mutated."""
import struct

import numpy as np
from hypothesis import strategies as st

from mpcft.runtime.frames import DTYPES, MAGIC, FrameType

MAX_FRAME = 1 << 30              # large, so that a header may claim far more than arrives
CONTROL = (FrameType.HELLO, FrameType.REQUEST, FrameType.RESPONSE)
BIG = [1 << 62, 1 << 63, (1 << 64) - 1, 1 << 48, 1 << 47, 1 << 32, 2 ** 31 - 1, MAX_FRAME,
       MAX_FRAME + 1, MAX_FRAME // 8]
def header(frame_type=3, code=6, shape=(), seq=1, nbytes=0, ndim=None, magic=MAGIC, version=1):
    """A frame header with any field values, unchecked (`ndim` defaults to len(shape))."""
    ndim = len(shape) if ndim is None else ndim
    return (struct.pack("!4sBBBBQQ", magic, version, frame_type, code, ndim, seq, nbytes)
            + b"".join(struct.pack("!Q", d) for d in shape))


class BytesSocket:
    """Stands in for a socket in `transport.read_frame`: reads `data`, then end of file."""

    def __init__(self, data):
        self._data, self.pos = memoryview(bytes(data)), 0

    def recv_into(self, view, nbytes):
        n = min(nbytes, len(view), len(self._data) - self.pos)
        view[:n] = self._data[self.pos:self.pos + n]
        self.pos += n
        return n


dims = st.one_of(st.integers(0, 5), st.sampled_from(BIG), st.integers(0, (1 << 64) - 1))


MUTATIONS = ("frame_type", "code", "shape", "nbytes", "seq", "ndim", "magic", "version",
             "payload", "bytes", "cut")


@st.composite
def built_frames(draw, seq=1, frame_types=st.sampled_from(list(FrameType)), payloads=None):
    """Bytes of a valid frame (number `seq`, of a type `frame_types` draws; a uint8 payload
    `payloads` draws, if given) after up to three mutations, each of one field, of the payload
    (short, long, garbage JSON, bool values other than 0/1), of raw bytes, or a cut."""
    code = 2 if payloads is not None else draw(st.sampled_from(sorted(DTYPES)))
    if payloads is not None:
        payload = draw(payloads)
        shape = [len(payload)]
    else:
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
    fields = dict(frame_type=draw(frame_types), code=code, shape=shape, seq=seq)
    fields["nbytes"] = size = int(np.prod(fields["shape"])) * DTYPES[code][1].itemsize
    if payloads is None:
        payload = draw(st.binary(min_size=size, max_size=size))
    if code == 1:
        payload = bytes(b & 1 for b in payload)
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
    for mutation in mutations:
        if mutation == "frame_type":
            fields["frame_type"] = draw(st.integers(0, 255))
        elif mutation == "code":
            fields["code"] = draw(st.integers(0, 255))
        elif mutation == "shape":
            fields["shape"] = draw(st.lists(dims, max_size=5))
            if draw(st.booleans()):                      # keep the length consistent
                items = int(np.prod(fields["shape"], dtype=object)) if fields["shape"] else 1
                fields["nbytes"] = items * DTYPES[code][1].itemsize % (1 << 64)
        elif mutation == "nbytes":
            fields["nbytes"] = draw(st.one_of(st.sampled_from([size + 1, max(0, size - 1), 0]),
                                              st.sampled_from(BIG), st.integers(0, (1 << 64) - 1)))
        elif mutation == "seq":
            fields["seq"] = draw(st.sampled_from([0, 1, 2, (1 << 64) - 1]))
        elif mutation == "ndim":
            fields["ndim"] = draw(st.integers(0, 255))
        elif mutation == "magic":
            fields["magic"] = draw(st.sampled_from([b"MPCG", b"\0\0\0\0", b"mpcf"]))
        elif mutation == "version":
            fields["version"] = draw(st.sampled_from([0, 2, 255]))
        elif mutation == "payload":
            payload = draw(st.one_of(st.binary(max_size=256), st.sampled_from(GARBAGE_JSON)))
            if draw(st.booleans()):                      # as a control frame of that payload
                fields.update(frame_type=draw(st.sampled_from(CONTROL)), code=2,
                              shape=[len(payload)], nbytes=len(payload))
    data = bytearray(header(**fields) + payload)
    if "bytes" in mutations and data:
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                       st.integers(0, 255)), min_size=1, max_size=4)):
            data[position] = value
    if "cut" in mutations:
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


GARBAGE_JSON = [b"", b"[1]", b"1", b'"x"', b"null", b"{", b'{"a":', b"\xff\xfe", b"[" * 5000,
                b'{"a":' * 3000, b"1" * 5000, b"1e999", b"NaN", b'{"rank": [1]}',
                b'{"role": "party", "rank": true, "world_size": 2}', b'{"count": -1}']


def control_frame(payload, frame_type=FrameType.HELLO):
    return header(frame_type, 2, (len(payload),), 1, len(payload)) + payload


any_bytes = st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(
    lambda b: MAGIC + b"\x01" + b))
