"""Link faults on the several-hosts form (benchmarks.faults.link_trial; RESULTS.md runs more):
parties and the dealer each in a network namespace, started with `mpcft party ... -m
mpcft.finetune` and `mpcft dealer`; after a random checkpoint one process's TCP connections to
a peer are destroyed (a reset mid-run) or one host's link goes silent (a stall, tested here). Every process
must end non-zero within the step timeout with a line naming an end of the broken link, none
may be left behind, and `mpcft party ... -m mpcft.finetune --resume` on each host must end
with the same shares, bit for bit, as an uninterrupted run."""
import random

import pytest

from benchmarks import faults
from benchmarks.netns import Hosts, HostsUnavailable


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """An uninterrupted 2-party several-hosts run's shares (skips where namespaces cannot be made)."""
    try:
        with Hosts(1, tag="mpcftprobe"):
            pass
    except HostsUnavailable as exc:
        pytest.skip(str(exc))
    return faults.reference_on_hosts(tmp_path_factory.mktemp("whole"), 2)


@pytest.mark.timeout(900)
def test_a_stalled_link_stops_every_host_and_resumes_bit_for_bit(tmp_path, expected):
    """A stall: only the step timeout can notice it. (A closed connection is what a killed
    process leaves, which tests/test_resume.py covers; RESULTS.md has closed-socket trials.)"""
    result = faults.link_trial(tmp_path, 2, "rank 0", "stall", expected, random.Random())
    assert result["links"] >= 1, result                   # the fault really cut something
    assert result["within_timeout"] and result["named"], result
    assert result["orphans"] == 0 and result["whole_checkpoints"], result
    assert result["resumed"] and result["matched"], result
