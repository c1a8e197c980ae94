"""Wire format: length-prefixed frames carrying one tensor each.

A frame is a fixed 24-byte header, `ndim` 8-byte shape entries, then the payload (the tensor's
bytes in C order, little-endian as on the sender's CPU)::

    magic b"MPCF" | version u8 | type u8 | dtype u8 | ndim u8 | seq u64 | payload length u64
    | shape u64 * ndim | payload

All integers in the header are big-endian. `seq` counts frames per direction of one connection
from 0; the receiver checks it. Control frames (hello, seed, requests) carry uint8 tensors.
Everything is validated before the payload is read: unknown type or dtype, `ndim` above
`MAX_NDIM`, a shape spanning more than `MAX_EXTENT` bytes, a payload length that disagrees with
shape and dtype, or one above the configured maximum raise `FrameError`. A receiving step states
what it accepts with `Expected` (frame type, dtype, shape). Frames reveal shapes and dtypes to
whoever reads the connection (under TLS only the peer does; a network observer sees sizes and
timing).
"""
import dataclasses
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
MAX_EXTENT = 1 << 48    # bytes a shape may span: its non-zero dimensions times the item size
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
    """The shape of a header's `ndim` entries; FrameError if it spans more than MAX_EXTENT bytes
    (even with a zero dimension) or does not hold exactly `nbytes` bytes."""
    shape = tuple(SHAPE_ENTRY.unpack_from(data, 8 * i)[0] for i in range(ndim))
    itemsize = DTYPES[code][1].itemsize
    if math.prod(d for d in shape if d) * itemsize > MAX_EXTENT:
        raise FrameError(f"malformed frame from {peer}: shape {list(shape)} of dtype "
                         f"{DTYPES[code][0]} spans more than {MAX_EXTENT} bytes")
    expected = math.prod(shape) * itemsize
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


def tensor_json(tensor, peer, step=None):
    """The JSON value a control frame's 1-D uint8 tensor holds; FrameError (naming `step`, if
    given) if it holds none."""
    where = f"{step}: " if step else ""
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise FrameError(f"{where}malformed control frame from {peer}: {tensor.dtype} "
                         f"{list(tensor.shape)}, expected 1-D uint8")
    try:
        return json.loads(tensor.numpy().tobytes().decode())
    except (ValueError, RecursionError) as exc:   # bad UTF-8 or JSON, or nested too deep
        raise FrameError(f"{where}malformed control frame from {peer}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a receiving step accepts: a frame type, a torch dtype (None: any) and a shape
    (None: any; a None entry: any size in that dimension)."""
    dtype: torch.dtype | None = None
    shape: tuple | None = None
    frame_type: FrameType = FrameType.TENSOR

    @classmethod
    def like(cls, value):
        """Exactly the dtype and shape `value` (a tensor on any device, or an array) travels as."""
        if isinstance(value, torch.Tensor):
            return cls(value.dtype, tuple(value.shape))
        code, array = as_wire_array(value)
        return cls(DTYPES[code][0], array.shape)

    @property
    def exact(self):
        """True if exactly one frame size matches (dtype and every dimension given)."""
        return self.dtype is not None and self.shape is not None and None not in self.shape

    def problem(self, frame_type, dtype, shape):
        """Why a frame of this type, torch dtype and shape is not accepted, or None."""
        if frame_type != self.frame_type:
            return (f"sent a {FrameType(frame_type).name} frame where a "
                    f"{self.frame_type.name} frame was expected")
        shape_ok = self.shape is None or (len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape)))
        if (self.dtype is not None and dtype != self.dtype) or not shape_ok:
            return f"sent {dtype} {list(shape)} where {self} was expected"
        return None

    def __str__(self):
        shape = ("any shape" if self.shape is None else
                 "[" + ", ".join("*" if d is None else str(d) for d in self.shape) + "]")
        return f"{'any dtype' if self.dtype is None else self.dtype} {shape}"
