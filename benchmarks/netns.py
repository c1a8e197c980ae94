"""Hosts on one machine: one Linux network namespace per process, each with one veth link
(10.231.0.i/24) into a bridge that lives in a further namespace, so a test or benchmark can
run parties as on separate hosts, and break or slow one host's link, without touching the
machine's own network. Needs root and iproute2 (`ip`, `ss`; `tc` to shape links).

    with Hosts(3) as hosts:                      # addresses 10.231.0.1 .. 10.231.0.3
        proc = hosts.popen(0, ["mpcft", "party", ...])
        hosts.close_links(0, hosts.addresses[1])  # ss -K: host 0's sockets to host 1 are destroyed
        hosts.set_link(2, up=False)               # host 2's link goes silent (a stalled link)
        hosts.shape(1, 100)                       # host 1's link: 100 Mbit/s each way
"""
import os
import shutil
import subprocess


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, or the kernel refuses)."""


def ip(*args) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


class Hosts:
    """`count` namespaces joined by a bridge; removed (with every process in them) on exit."""

    def __init__(self, count: int, tag: str | None = None):
        self.tag = tag or f"mpcft{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.names = [f"{self.tag}-h{i}" for i in range(count)]
        self.addresses = [f"10.231.0.{i + 1}" for i in range(count)]
        self._created = []

    def __enter__(self):
        if os.geteuid() != 0:
            raise HostsUnavailable("network namespaces need root")
        if shutil.which("ip") is None or shutil.which("ss") is None:
            raise HostsUnavailable("iproute2 (`ip`, `ss`) is not installed")
        try:
            ip("netns", "add", self.switch)
        except subprocess.CalledProcessError as exc:
            raise HostsUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from None
        self._created.append(self.switch)
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, (name, address) in enumerate(zip(self.names, self.addresses)):
                ip("netns", "add", name)
                self._created.append(name)
                ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}",
                   "netns", self.switch)
                ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
                ip("-n", name, "link", "set", "eth0", "up")
                ip("-n", name, "link", "set", "lo", "up")
                ip("-n", self.switch, "link", "set", f"port{i}", "master", "br0")
                ip("-n", self.switch, "link", "set", f"port{i}", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for name in reversed(self._created):
            for pid in self.pids(name):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self._created.clear()

    def command(self, host: int, argv: list) -> list:
        """`argv` run inside host `host`'s namespace (`ip netns exec` replaces itself: same pid)."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def popen(self, host: int, argv: list, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def pids(self, name: str | None = None) -> list[int]:
        """The processes still in namespace `name` (default: in any of the hosts)."""
        names = [name] if name else self.names
        found = []
        for each in names:
            result = subprocess.run(["ip", "netns", "pids", each], capture_output=True, text=True, timeout=20)
            found += [int(word) for word in result.stdout.split()]
        return found

    def set_link(self, host: int, up: bool) -> None:
        """Host `host`'s only link up or down; down, its packets are dropped silently both ways
        (a stalled link: no reset, no error, only silence)."""
        ip("-n", self.names[host], "link", "set", "eth0", "up" if up else "down")

    def close_links(self, host: int, peer_address: str) -> int:
        """Destroys host `host`'s TCP connections to `peer_address` (`ss -K`): host's side sees
        ECONNABORTED, the peer a reset. Returns how many connections there were."""
        listing = subprocess.run(self.command(host, ["ss", "-tnH", "state", "established", "dst", peer_address]),
                                 capture_output=True, text=True, timeout=20).stdout
        subprocess.run(self.command(host, ["ss", "-K", "state", "established", "dst", peer_address]),
                       capture_output=True, timeout=20)
        return len(listing.splitlines())

    def shape(self, host: int, rate_mbit: float) -> None:
        """Host `host`'s link limited to `rate_mbit` Mbit/s each way, as a host on an access
        link of that rate: a token bucket (tc tbf) on its eth0 (what it sends) and on its switch
        port (what it receives). Burst: 1 ms at the rate, at least 16 KiB (ten full frames), so
        a link that was idle passes little at full speed before the rate holds; queue: 8 MiB,
        more than a host's TCP sockets queue (tcp_limit_output_bytes, 4 MiB here), so the
        shaper delays and does not drop."""
        if shutil.which("tc") is None:
            raise HostsUnavailable("iproute2's `tc` is not installed")
        burst = max(int(rate_mbit * 1e6 / 8 * 1e-3), 16 * 1024)
        for namespace, device in ((self.names[host], "eth0"), (self.switch, f"port{host}")):
            try:
                subprocess.run(["tc", "-n", namespace, "qdisc", "replace", "dev", device, "root", "tbf",
                                "rate", f"{rate_mbit}mbit", "burst", str(burst), "limit", str(8 << 20)],
                               check=True, capture_output=True, text=True, timeout=20)
            except subprocess.CalledProcessError as exc:
                raise HostsUnavailable(f"`tc qdisc ... tbf` failed: {exc.stderr.strip()}") from None
