"""Fuzzing cluster files (issue 15): `config.load` on random bytes and text, and on valid
cluster documents with keys dropped, added or given values of any TOML type (huge and
negative integers, nan and inf, strings with NUL or line breaks, arrays, tables, dates),
written as TOML sections or inline tables, then mutated byte by byte. It refuses with a
one-line ConfigError that names the file, or returns a cluster whose every field is usable.
"""
import datetime
import json
import math
import pathlib
import re
import tempfile
import threading

import pytest
from hypothesis import example, given, strategies as st

from mpcft.runtime import config
from mpcft.runtime.errors import ConfigError

from . import harness

pytestmark = pytest.mark.timeout(300)


def valid_document(world=2, dealer=True, tls=True):
    doc = {"cluster": {"timeout": 60, "connect_timeout": 60.0, "tls": tls, "ca": "certs/ca.pem",
                       "max_frame_bytes": 1 << 32, "max_buffered_bytes": 1 << 32,
                       "dealer_idle_timeout": 3600},
           "party": [{"rank": r, "host": f"10.0.0.{r + 1}", "port": 29500, "cert": f"certs/party-{r}.pem",
                      "key": f"certs/party-{r}-key.pem"} for r in range(world)]}
    if dealer:
        doc["dealer"] = {"host": "10.0.0.9", "port": 29400, "cert": "certs/dealer.pem",
                         "key": "certs/dealer-key.pem"}
    return doc


def key(name):
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def value(v):
    """`v` as an inline TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (int, str)):
        return str(v) if isinstance(v, int) else json.dumps(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"


def document(doc, sections=True):
    """A TOML document of `doc`: [table] and [[array]] sections where they fit, else inline."""
    lines = []
    for name, v in doc.items():
        if sections and isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values()):
            lines += [f"[{key(name)}]"] + [f"{key(k)} = {value(x)}" for k, x in v.items()]
        elif sections and isinstance(v, list) and v and all(
                isinstance(t, dict) and not any(isinstance(x, dict) for x in t.values()) for t in v):
            for t in v:
                lines += [f"[[{key(name)}]]"] + [f"{key(k)} = {value(x)}" for k, x in t.items()]
        else:
            lines.insert(0, f"{key(name)} = {value(v)}")
    return "\n".join(lines) + "\n"


chars = st.characters(blacklist_categories=("Cs",))      # TOML strings hold Unicode scalars only
toml_scalars = st.one_of(
    st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
    st.sampled_from([0, -1, 1, 65535, 65536, 1 << 62, (1 << 63) - 1, -(1 << 63)]),
    st.floats(), st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, math.nan, 9.3e9]),
    st.text(chars, max_size=10), st.sampled_from(["", "\x00", "a\nb", "127.0.0.1", "::1", "../../etc/passwd"]),
    st.datetimes(timezones=st.none()), st.dates(), st.times())
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(chars, max_size=5), inner, max_size=3)), max_leaves=6)


@st.composite
def cluster_documents(draw):
    doc = valid_document(draw(st.sampled_from([2, 3, 2, 0, 1, 4])), draw(st.booleans()), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        parties = doc.get("party") if isinstance(doc.get("party"), list) else []
        table = draw(st.sampled_from([doc.get("cluster"), doc.get("dealer")] + parties))
        how = draw(st.sampled_from(["drop", "value", "extra", "table", "rank"]))
        if not isinstance(table, dict) or how == "table":
            doc[draw(st.sampled_from(["cluster", "party", "dealer", "other"]))] = draw(toml_values)
        elif how == "drop" and table:
            table.pop(draw(st.sampled_from(sorted(table))))
        elif how == "value" and table:
            table[draw(st.sampled_from(sorted(table)))] = draw(toml_values)
        elif how == "extra":
            table[draw(st.text(chars, max_size=6))] = draw(toml_values)
        elif how == "rank" and parties:
            draw(st.randoms()).shuffle(parties)
            if isinstance(parties[-1], dict):
                parties[-1]["rank"] = draw(st.sampled_from([0, 1, -1, 5, True, 1.0, "1"]))
    text = document(doc, draw(st.booleans())).encode("utf-8", errors="surrogatepass")
    data = bytearray(text)
    if draw(st.integers(0, 9)) == 7:                    # a few bytes overwritten (rarely)
        for position, byte in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                      st.integers(0, 255)), min_size=1, max_size=2)):
            data[position] = byte
    if draw(st.integers(0, 9)) == 7:                    # cut short
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


files = st.one_of(cluster_documents(), cluster_documents(), cluster_documents(), st.binary(max_size=200),
                  st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass")))


def check_usable(cluster):
    """Every field of a loaded cluster is what the runtime can use as it stands."""
    assert cluster.world_size >= 2 and [p.rank for p in cluster.parties] == list(range(cluster.world_size))
    endpoints = list(cluster.parties) + ([cluster.dealer] if cluster.dealer else [])
    for e in endpoints:
        assert isinstance(e.host, str) and e.host and "\0" not in e.host and 1 <= e.port <= 65535
        assert e.bind is None or (isinstance(e.bind, str) and e.bind)
        assert all(p is None or isinstance(p, pathlib.Path) for p in (e.cert, e.key))
    assert cluster.dealer is None or cluster.dealer.rank is None
    for seconds in (cluster.timeout, cluster.connect_timeout, cluster.dealer_idle_timeout):
        assert type(seconds) is float and 0 < seconds <= threading.TIMEOUT_MAX
    for limit in (cluster.max_frame_bytes, cluster.max_buffered_bytes):
        assert type(limit) is int and limit > 0
    assert type(cluster.tls) is bool
    if cluster.tls:
        assert cluster.ca is not None and all(e.cert and e.key for e in endpoints)


def load(data):
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "cluster.toml"
        path.write_bytes(data)
        try:
            return config.load(path)
        except ConfigError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
            raise


@given(data=files)
@example(data=b"\xff\xfe[cluster]\n")                                          # not UTF-8
@example(data=b"a = " + b"[" * 5000)                                            # nested too deep
@example(data=b"a = " + b"1" * 5000)                                            # a 5000-digit integer
@example(data=document(dict(valid_document(), cluster=3)).encode())            # [cluster] not a table
@example(data=document(dict(valid_document(), party={"rank": 0})).encode())    # [party] not an array
@example(data=document(dict(valid_document(), party=["a", "b"])).encode())
@example(data=b'[cluster]\ntls = false\ntimeout = nan\n' + document({"party": valid_document()["party"]}).encode())
@example(data=b'[cluster]\ntls = false\nmax_frame_bytes = inf\n' + document({"party": valid_document()["party"]}).encode())
@example(data=document({"cluster": {"tls": False}, "party": [{"rank": "x", "host": "a", "port": 1},
                                                              {"rank": 1, "host": "a", "port": 2}]}).encode())
@example(data=document({"cluster": {"tls": False}, "party": [{"rank": 0, "host": "a", "port": 99999},
                                                              {"rank": 1, "host": "a", "port": 2}]}).encode())
@example(data=document({"cluster": {"tls": False}, "party": [{"rank": 0, "host": "a", "port": 1, "cert": "a\0b"},
                                                              {"rank": 1, "host": "a", "port": 2}]}).encode())
@example(data=document({"cluster": {"tls": False}, "party": [{"rank": 0, "host": "a", "port": 1, "bind": 3},
                                                              {"rank": 1, "host": "a", "port": 2}]}).encode())
@example(data=document({"cluster": {"tls": False, "timeout": 1e300}, "party": valid_document()["party"]}).encode())
@harness.fuzz_settings(300)
def test_cluster_file_is_refused_in_one_line_or_fully_usable(data):
    with harness.case("cluster TOML", (ConfigError,), 16 * len(data) + 4 * harness.MIB) as outcome:
        cluster = load(data)
    if outcome.error is None:
        check_usable(cluster)


def test_the_valid_documents_load():
    for world, dealer, tls in ((2, True, True), (3, False, False), (4, True, False)):
        for sections in (True, False):
            cluster = load(document(valid_document(world, dealer, tls), sections).encode())
            check_usable(cluster)
            assert cluster.world_size == world and (cluster.dealer is not None) == dealer
