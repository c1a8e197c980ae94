"""Wire format: length-prefixed frames carrying one tensor each.

A frame is a fixed 24-byte header, `ndim` 8-byte shape entries, then the payload (the tensor's
bytes in C order, little-endian as on the sender's CPU)::

    magic b"MPCF" | version u8 | type u8 | dtype u8 | ndim u8 | seq u64 | payload length u64
    | shape u64 * ndim | payload

All integers in the header are big-endian. `seq` counts frames per direction of one connection
from 0; the receiver checks it. Control frames (hello, seed, requests) carry uint8 tensors.
Everything is validated before the payload is read: unknown type or dtype, `ndim` above
`MAX_NDIM`, a payload length that disagrees with shape and dtype, or one above the configured
maximum raise `FrameError`. Frames reveal shapes and dtypes to whoever reads the connection
(under TLS only the peer does; a network observer sees sizes and timing).
"""
import enum
import json
import math
import struct

import numpy as np
import torch

from .errors import FrameError

MAGIC = b"MPCF"
VERSION = 1
MAX_NDIM = 16
HEADER = struct.Struct("!4sBBBBQQ")
SHAPE_ENTRY = struct.Struct("!Q")


class FrameType(enum.IntEnum):
    HELLO = 1      # JSON identity: {"role", "rank", "world_size"}
    SEED = 2       # 32 random bytes
    TENSOR = 3     # protocol data
    REQUEST = 4    # JSON dealer request: {"kind", "params", "seq"}
    RESPONSE = 5   # JSON dealer response header: {"count"} or {"error"}; `count` TENSOR frames follow
    GOODBYE = 6    # clean end of session; nothing follows


# dtype code -> (torch dtype, numpy dtype used on the wire)
DTYPES = {
    1: (torch.bool, np.dtype(np.bool_)),
    2: (torch.uint8, np.dtype(np.uint8)),
    3: (torch.int8, np.dtype(np.int8)),
    4: (torch.int16, np.dtype(np.int16)),
    5: (torch.int32, np.dtype(np.int32)),
    6: (torch.int64, np.dtype(np.int64)),
    7: (torch.float16, np.dtype(np.float16)),
    8: (torch.bfloat16, np.dtype(np.int16)),   # numpy has no bfloat16: bits travel as int16
    9: (torch.float32, np.dtype(np.float32)),
    10: (torch.float64, np.dtype(np.float64)),
    11: (torch.complex64, np.dtype(np.complex64)),
    12: (torch.complex128, np.dtype(np.complex128)),
}
TORCH_CODES = {torch_dtype: code for code, (torch_dtype, _) in DTYPES.items()}
NUMPY_CODES = {np_dtype: code for code, (torch_dtype, np_dtype) in DTYPES.items()
               if torch_dtype is not torch.bfloat16}


def as_wire_array(tensor):
    """(dtype code, C-contiguous numpy array sharing memory with `tensor` where possible)."""
    if isinstance(tensor, torch.Tensor):
        if tensor.device.type != "cpu":
            raise TypeError(f"only CPU tensors can be sent, got device {tensor.device}")
        if tensor.dtype not in TORCH_CODES:
            raise TypeError(f"cannot send torch dtype {tensor.dtype}")
        code = TORCH_CODES[tensor.dtype]
        tensor = tensor.detach().resolve_conj().resolve_neg().contiguous()
        if tensor.dtype is torch.bfloat16:
            tensor = tensor.view(torch.int16)
        return code, tensor.numpy()
    array = np.asarray(tensor)
    if array.dtype not in NUMPY_CODES:
        raise TypeError(f"cannot send numpy dtype {array.dtype}")
    return NUMPY_CODES[array.dtype], np.ascontiguousarray(array)


def encode_header(frame_type, code, shape, seq, nbytes):
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensor has {len(shape)} dimensions, at most {MAX_NDIM} can be sent")
    return HEADER.pack(MAGIC, VERSION, frame_type, code, len(shape), seq, nbytes) + b"".join(
        SHAPE_ENTRY.pack(d) for d in shape)


def parse_fixed_header(data, peer, max_bytes):
    """Validate the fixed part of a header; returns (frame type, dtype code, ndim, seq, nbytes)."""
    magic, version, frame_type, code, ndim, seq, nbytes = HEADER.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"malformed frame from {peer}: bad magic {magic!r}")
    if version != VERSION:
        raise FrameError(f"malformed frame from {peer}: wire version {version}, expected {VERSION}")
    if frame_type not in FrameType._value2member_map_:
        raise FrameError(f"malformed frame from {peer}: unknown frame type {frame_type}")
    if code not in DTYPES:
        raise FrameError(f"malformed frame from {peer}: unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise FrameError(f"malformed frame from {peer}: {ndim} dimensions (max {MAX_NDIM})")
    if nbytes > max_bytes:
        raise FrameError(f"oversized frame from {peer}: {nbytes} bytes, limit {max_bytes}")
    return FrameType(frame_type), code, ndim, seq, nbytes


def parse_shape(data, ndim, code, nbytes, peer):
    shape = tuple(SHAPE_ENTRY.unpack_from(data, 8 * i)[0] for i in range(ndim))
    expected = math.prod(shape) * DTYPES[code][1].itemsize
    if expected != nbytes:
        raise FrameError(f"malformed frame from {peer}: payload of {nbytes} bytes does not match "
                         f"shape {list(shape)} of dtype {DTYPES[code][0]} ({expected} bytes)")
    return shape


def to_tensor(buffer, code, shape, peer):
    """Torch tensor viewing `buffer` (a uint8 numpy array) with the frame's dtype and shape."""
    torch_dtype, np_dtype = DTYPES[code]
    if torch_dtype is torch.bool and buffer.size and buffer.max() > 1:
        raise FrameError(f"malformed frame from {peer}: bool payload holds values other than 0/1")
    array = buffer.view(np_dtype).reshape(shape)
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if torch_dtype is torch.bfloat16 else tensor


def json_tensor(obj):
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)


def tensor_json(tensor, peer):
    try:
        return json.loads(tensor.numpy().tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"malformed control frame from {peer}: {exc}") from None
