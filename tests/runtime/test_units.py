"""Frames, counters and the cluster file, without sockets."""
import struct

import numpy as np
import pytest
import torch

from mpcft.runtime import CommStats, ConfigError, FrameError, load_config, local_cluster
from mpcft.runtime import frames
from mpcft.runtime.transport import MemoryChannel

pytestmark = pytest.mark.timeout(30)

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float64, torch.float32,
          torch.float16, torch.bfloat16, torch.int8, torch.int16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_frame_round_trip_keeps_dtype_shape_values(dtype):
    a, b = MemoryChannel.pair("party 0", "party 1")
    data = (torch.arange(24) % 2).to(dtype).reshape(2, 3, 4)
    payload, wire = a.send(frames.FrameType.TENSOR, data, "test")
    frame_type, got, got_wire = b.recv("test", 1.0)
    assert (frame_type, got.dtype, got.shape) == (frames.FrameType.TENSOR, dtype, data.shape)
    assert torch.equal(got, data) and payload == data.nbytes and wire == got_wire > payload


def test_numpy_scalars_empty_and_noncontiguous_tensors():
    a, b = MemoryChannel.pair("party 0", "party 1")
    items = [np.arange(6, dtype=np.int64).reshape(2, 3), torch.tensor(5), torch.zeros(0, 3),
             torch.arange(12).reshape(3, 4).t()]
    for item in items:
        a.send(frames.FrameType.TENSOR, item, "test")
    for item in items:
        got = b.recv("test", 1.0)[1]
        assert isinstance(got, torch.Tensor)
        assert torch.equal(got, torch.as_tensor(np.asarray(item)))


def good_header(nbytes=16, shape=(2,), code=6, frame_type=3, seq=1):
    return frames.encode_header(frame_type, code, shape, seq, nbytes)


@pytest.mark.parametrize("header, message", [
    (b"XXXX" + good_header()[4:], "bad magic"),
    (good_header(frame_type=99), "unknown frame type 99"),
    (good_header(code=77), "unknown dtype code 77"),
    (good_header(nbytes=17), "does not match shape"),
    (good_header(nbytes=1 << 40, shape=(1 << 37,)), "oversized frame"),
    (good_header(seq=5), "out-of-sequence"),
])
def test_bad_headers_are_refused_naming_the_peer(header, message):
    channel = MemoryChannel("party 3", max_frame_bytes=1 << 30)
    with pytest.raises(FrameError, match=message) as info:
        channel._decode(header, np.zeros(16, np.uint8))
    assert "party 3" in str(info.value)


def test_bool_payload_must_be_zero_or_one():
    channel = MemoryChannel("party 1", 1 << 20)
    with pytest.raises(FrameError, match="bool"):
        channel._decode(good_header(nbytes=2, code=1), np.array([0, 7], np.uint8))


def test_comm_rounds_regions_snapshots_and_table():
    comm = CommStats()
    comm.count_sent(8, 40)
    comm.count_round()
    with comm.region("matmul"):
        with comm.round():
            comm.count_sent(16, 48)
            comm.count_received(16, 48)
            comm.count_round()
            comm.count_round()
        with comm.region("trunc"):
            before = comm.snapshot()
            comm.count_received(4, 36)
            comm.count_round()
            comm.count_dealer(10, 100)
    diff = comm.snapshot() - before
    assert (comm.bytes_sent, comm.bytes_received, comm.rounds) == (24, 20, 3)
    snap = comm.snapshot()
    assert (snap.region("matmul").rounds, snap.region("matmul/trunc").rounds) == (2, 1)
    assert snap.region("matmul").bytes_received == 20
    assert (diff.rounds, diff.bytes_received, diff.dealer_requests) == (1, 4, 1)
    assert diff.region("matmul/trunc").dealer_bytes_received == 100
    table = comm.table()
    assert "matmul/trunc" in table and table.splitlines()[2].startswith("total")
    comm.reset()
    assert comm.bytes_sent == 0 and comm.snapshot().regions == {}


def test_cluster_file_round_trip_and_errors(tmp_path):
    config, path = local_cluster(tmp_path, 3, dealer=True, timeout=7)
    again = load_config(path)
    assert again == config and again.world_size == 3 and again.timeout == 7
    assert again.party(2).cert.name == "party-2.pem" and again.dealer.identity == "dealer"
    text = path.read_text()
    (tmp_path / "bad.toml").write_text(text.replace("rank = 2", "rank = 5"))
    with pytest.raises(ConfigError, match="ranks must be"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text(text.replace("connect_timeout", "conect_timeout"))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(tmp_path / "typo.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    assert struct.calcsize("!4sBBBBQQ") == frames.HEADER.size == 24
