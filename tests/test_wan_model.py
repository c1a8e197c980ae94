"""benchmarks.wan's cost model: its arithmetic on fixed numbers, and its prediction against a
run on bandwidth-shaped links (parties and dealer in network namespaces, tc tbf; skipped
without root, iproute2 or tc)."""
import shutil

import pytest

from benchmarks import wan
from benchmarks.netns import Hosts, HostsUnavailable
from mpcft.runtime import Counts


def test_on_link_bytes_per_payload_byte_are_records_tcp_ip_and_ethernet():
    assert wan.ON_LINK == pytest.approx((262144 + 20) / 262144 * 1514 / 1448, rel=1e-9)
    assert wan.ON_LINK == pytest.approx(1.045660, rel=1e-6)


def test_the_dealer_replies_add_to_the_peer_traffic_into_the_party_that_asks():
    party0 = Counts(bytes_sent=10_000_000, bytes_received=10_000_000, wire_bytes_sent=10_000_100,
                    wire_bytes_received=10_000_100, rounds=4, dealer_bytes_sent=300,
                    dealer_bytes_received=5_000_000, dealer_requests=2)
    party1 = Counts(bytes_sent=10_000_000, bytes_received=10_000_000, wire_bytes_sent=10_000_100,
                    wire_bytes_received=10_000_100, rounds=4)
    link_bytes = wan.busiest_direction_bytes([party0, party1])
    assert link_bytes == 15_000_100
    # 1.5 s + 4 rounds x 20 ms + 8 x 1.045660 x 15,000,100 B / 100 Mbit/s
    assert wan.predicted_seconds(1.5, 4, link_bytes, wan.Link(rate_mbit=100, rtt_ms=20)) == \
        pytest.approx(1.5 + 0.08 + 1.2548002, rel=1e-6)


def test_a_dealer_serving_several_parties_has_the_busiest_link():
    party = Counts(wire_bytes_sent=2_000_000, wire_bytes_received=2_000_000, dealer_bytes_sent=100,
                   dealer_bytes_received=8_000_000, rounds=3)
    assert wan.busiest_direction_bytes([party] * 3) == 24_000_000
    assert wan.predicted_seconds(0.5, 3, 24_000_000, wan.Link(rate_mbit=1_000, rtt_ms=5)) == \
        pytest.approx(0.5 + 0.015 + 0.2007667, rel=1e-6)


def test_the_link_profiles_are_lan_metro_and_wan():
    assert wan.LINKS == {"LAN": wan.Link(10_000, 0.2), "metro": wan.Link(1_000, 5.0), "WAN": wan.Link(100, 20.0)}


@pytest.mark.timeout(300)
def test_the_model_predicts_a_multiply_on_a_50_mbit_link_within_25_percent(tmp_path):
    """2-party multiply of 10^6 at 50 Mbit/s each way (when written: 48 MB into party 0, the
    peer's 24 MB and the dealer's 24 MB, about 8 s a run); median of 3 after a warm-up."""
    if shutil.which("tc") is None:
        pytest.skip("iproute2's `tc` is not installed (needed to shape links)")
    try:
        with Hosts(1, tag="mpcftwanprobe") as probe:
            probe.shape(0, 50)
    except HostsUnavailable as exc:
        pytest.skip(str(exc))
    loopback = wan.on_loopback("multiply", 2, 3)
    shaped = wan.on_shaped_hosts("multiply", 2, 3, 50, tmp_path)
    assert shaped.measured.link_bytes == loopback.link_bytes
    predicted = loopback.predict(wan.Link(50, shaped.rtt_ms))
    assert 0.75 <= shaped.measured.seconds / predicted <= 1.25, (shaped, loopback, predicted)
