"""NETCONF latency: our agent vs yuma123's netconfd, same client (ncclient), same run.

Measures, for each server over SSH on loopback with public-key auth:
  * session set-up (TCP + SSH + auth + hello exchange), p50/p99
  * edit-config round trip of one SA-sized change (re-keying one ietf-i2nsf-ikeless
    sad-entry — new SPI and key — in a running datastore holding 10 SAs), p50/p99
  * one edit-config merging 1,000 new SPD entries (p50 of 5; removed between samples)
  * get-config of running holding 10,000 SPD entries, p50
netconfd runs behind a private sshd on a loopback port (`Subsystem netconf
/usr/sbin/netconf-subsystem`), loading the same ietf-i2nsf-ikeless module from yang/.
Debian packages netconfd and openssh-server are installed when missing (needs root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
import ncclient.transport.session as nc_session  # noqa: E402
from ncclient import manager  # noqa: E402

nc_session.TICK = 0.001  # ncclient otherwise sleeps up to 100 ms before each request

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
APT_PACKAGES = ("netconfd", "openssh-server")
BASE_SAS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port}")


def ensure_packages() -> None:
    missing = [
        p for p in APT_PACKAGES
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                          text=True).stdout.find("install ok installed") < 0
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"need root to apt-get install {' '.join(missing)}")
    print(f"installing {' '.join(missing)} ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def sad_entry(i: int, spi: int | None = None) -> str:
    spi = 1000 + i if spi is None else spi
    return (
        f"<sad-entry><name>sa-{i}</name><reqid>{i % 1000 + 1}</reqid><ipsec-sa-config>"
        f"<spi>{spi}</spi><ext-seq-num>true</ext-seq-num><seq-overflow>false</seq-overflow>"
        "<anti-replay-window-size>64</anti-replay-window-size><traffic-selector>"
        "<local-prefix>198.51.100.1/32</local-prefix><remote-prefix>198.51.100.2/32"
        "</remote-prefix><inner-protocol>any</inner-protocol></traffic-selector>"
        "<protocol-parameters>esp</protocol-parameters><mode>transport</mode><esp-sa>"
        "<encryption><encryption-algorithm>20</encryption-algorithm>"
        f"<key>01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:10:{spi % 256:02x}:23:45:67</key>"
        "</encryption>"
        "</esp-sa></ipsec-sa-config></sad-entry>"
    )


def sad(i: int, spi: int | None = None) -> str:
    return f"<sad>{sad_entry(i, spi)}</sad>"


def spd_entry(i: int) -> str:
    a, b = divmod(i, 250)
    return (
        f"<spd-entry><name>pol-{i}</name><direction>outbound</direction><reqid>1</reqid>"
        "<ipsec-policy-config><traffic-selector>"
        f"<local-prefix>10.{a // 250}.{a % 250}.{b + 1}/32</local-prefix>"
        "<remote-prefix>198.51.100.2/32</remote-prefix><inner-protocol>any</inner-protocol>"
        "</traffic-selector><processing-info><action>bypass</action></processing-info>"
        "</ipsec-policy-config></spd-entry>"
    )


def ipsec(body: str) -> str:
    return f'<ipsec-ikeless xmlns="{IKELESS}">{body}</ipsec-ikeless>'


def config(body: str) -> str:
    return f'<config xmlns="{NC_NS}">{ipsec(body)}</config>'


class Server:
    name = ""
    port = 0

    def connect(self) -> manager.Manager:
        return manager.connect(
            host="127.0.0.1", port=self.port, username=self.user, key_filename=str(self.key),
            hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=120,
        )

    def __init__(self, work: Path, key: Path, pub: str, startup: str = "") -> None:
        self.startup = startup  # children of <config>: the initial configuration
        self.work = work
        self.key = key
        self.pub = pub
        self.user = "root" if os.geteuid() == 0 else os.environ.get("USER", "bench")
        self.procs: list[subprocess.Popen[bytes]] = []

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Ours(Server):
    name = "i2nsf-agent"

    def start(self) -> None:
        d = Path(tempfile.mkdtemp(prefix="ours-", dir=self.work))
        self.port = free_port()
        if self.startup:
            (d / "state").mkdir(mode=0o700)
            (d / "state" / "startup.xml").write_text(
                f'<data xmlns="{NC_NS}">{self.startup}</data>')
        (d / "agent.toml").write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nstate_dir = "{d / "state"}"\n'
            f'[yang]\nmodules = ["ietf-i2nsf-ikeless"]\n[dataplane]\nappliers = ["null"]\n'
            'accept_unenforced = true\n'  # (a NETCONF benchmark: SAs stored, not enforced)
            f'[[users]]\nname = "{self.user}"\nauthorized_keys = ["{self.pub}"]\n'
        )
        p = subprocess.Popen(
            [sys.executable, "-m", "nsf_agent.cli", "run", "-c", str(d / "agent.toml"),
             "--log-level", "WARNING"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.procs.append(p)
        wait_port(self.port, p)


class Netconfd(Server):
    name = "netconfd"

    def start(self) -> None:
        d = Path(tempfile.mkdtemp(prefix="netconfd-", dir=self.work))
        startup = ["--no-startup"]
        if self.startup:
            (d / "startup.xml").write_text(f'<config xmlns="{NC_NS}">{self.startup}</config>')
            startup = [f"--startup={d / 'startup.xml'}"]
        sock = d / "ncxserver.sock"
        self.port = free_port()
        # yuma's own modules first: netconfd needs its yuma-ncx-annotated `notifications`,
        # not the plain RFC 5277 one that yang/standard holds for our server
        modpath = f"/usr/share/yuma/modules:{ROOT / 'yang'}:{ROOT / 'yang' / 'standard'}"
        nd = subprocess.Popen(
            ["/usr/sbin/netconfd", "--module=ietf-i2nsf-ikeless", f"--modpath={modpath}",
             *startup, f"--superuser={self.user}", "--target=running",
             f"--port={self.port}",  # netconfd only admits sessions for its listed ports
             f"--ncxserver-sockname={sock}",
             os.environ.get("NETCONFD_LOG", "--log-level=error"), f"--log={d / 'netconfd.log'}"],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(nd)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if nd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"netconfd did not start; see {d / 'netconfd.log'}")
            time.sleep(0.02)
        hostkey = d / "ssh_host_ed25519_key"
        hostkey.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        hostkey.chmod(0o600)
        (d / "authorized_keys").write_text(self.pub + "\n")
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUseDNS no\n"
            f"Subsystem netconf /usr/sbin/netconf-subsystem "
            f"--ncxserver-sockname={self.port}@{sock}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        with open(d / "sshd.log", "wb") as log:
            sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                    stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(sshd)
        wait_port(self.port, sshd)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench_get(srv: Server, n_get: int, big: int) -> dict[str, float]:
    """get-config of a running datastore that starts with `big` SPD entries."""
    m = srv.connect()
    try:
        got = m.get_config("running").xml
        n = got.count("<spd-entry>") + got.count(":spd-entry>") // 2
        if n != big:
            raise RuntimeError(f"{srv.name}: get-config returned {n} of {big} entries")
        t = timed(lambda: m.get_config("running"), n_get)
    finally:
        m.close_session()
    return {"get10k_p50": pct(t, 0.5)}


def bench_server(srv: Server, n_setup: int, n_bulk: int = 5) -> dict[str, float]:
    res: dict[str, float] = {}
    # session set-up
    def setup() -> None:
        m = srv.connect()
        m.close_session()

    setup()  # warm-up
    t = timed(setup, n_setup)
    res["setup_p50"], res["setup_p99"] = pct(t, 0.5), pct(t, 0.99)

    m = srv.connect()
    try:
        # bulk merge of 1,000 new entries into running (one edit-config), removed again
        # (untimed) before the next sample: one sample alone varies by ±40 % here
        bulk = config("<spd>" + "".join(spd_entry(i) for i in range(1000)) + "</spd>")
        remove = config(f'<spd xmlns:nc="{NC_NS}" nc:operation="remove"/>')
        t = []
        for _ in range(n_bulk):
            t0 = time.perf_counter()
            m.edit_config(target="running", config=bulk)
            t.append((time.perf_counter() - t0) * 1000)
            m.edit_config(target="running", config=remove)
        res["bulk1k_edit"] = pct(t, 0.5)
    finally:
        m.close_session()
    return res


def bench_edits(pair: tuple[Server, ...], n_edit: int, block: int = 25
                ) -> dict[str, dict[str, float]]:
    """One SA-sized change (re-key sa-0: new SPI and key; the tree size stays constant),
    measured in alternating blocks on each server, so that whatever else the machine does
    during the run weighs on both alike."""
    sessions = [srv.connect() for srv in pair]
    try:
        spis = iter(range(5000, 5000 + 2 * n_edit + 100))
        for m in sessions:
            for i in range(BASE_SAS):  # a gateway with a few SAs
                m.edit_config(target="running", config=config(sad(i)))
            timed(lambda m=m: m.edit_config(target="running",
                                            config=config(sad(0, next(spis)))), 20)
        samples: list[list[float]] = [[] for _ in pair]
        while len(samples[0]) < n_edit:
            k = min(block, n_edit - len(samples[0]))
            for m, out in zip(sessions, samples, strict=True):
                out += timed(lambda m=m: m.edit_config(target="running",
                                                       config=config(sad(0, next(spis)))), k)
    finally:
        for m in sessions:
            m.close_session()
    return {srv.name: {"edit_p50": pct(t, 0.5), "edit_p99": pct(t, 0.99)}
            for srv, t in zip(pair, samples, strict=True)}


@contextmanager
def servers(work: Path, startup: str = "") -> Iterator[tuple[Ours, Netconfd]]:
    kpath = work / "client_key"
    if not kpath.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        kpath.write_bytes(key.export_private_key())
        kpath.chmod(0o600)
    pub = asyncssh.read_private_key(str(kpath)).export_public_key().decode().strip()
    ours, theirs = Ours(work, kpath, pub, startup), Netconfd(work, kpath, pub, startup)
    try:
        ours.start()
        theirs.start()
        yield ours, theirs
    finally:
        ours.stop()
        theirs.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=500, help="edit-config samples")
    ap.add_argument("--setups", type=int, default=30, help="session set-up samples")
    ap.add_argument("--gets", type=int, default=5, help="get-config samples")
    ap.add_argument("--entries", type=int, default=10000, help="SPD entries for get-config")
    args = ap.parse_args()
    ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="nc-bench-"))
    try:
        results: dict[str, dict[str, float]] = {}
        with servers(work) as pair:
            print("-- edit-config, alternating blocks of 25 on each server", flush=True)
            results = bench_edits(pair, args.edits)
            for srv in pair:
                print(f"-- {srv.name}: session set-up and a 1,000-entry edit", flush=True)
                results[srv.name].update(bench_server(srv, args.setups))
        big = ipsec("<spd>" + "".join(spd_entry(i) for i in range(args.entries)) + "</spd>")
        with servers(work, startup=big) as pair:
            for srv in pair:
                print(f"-- {srv.name}: get-config of {args.entries} entries", flush=True)
                results[srv.name].update(bench_get(srv, args.gets, args.entries))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    a, b = results["i2nsf-agent"], results["netconfd"]
    print(f"\n{'metric (ms)':<28}{'i2nsf-agent':>12}{'netconfd':>12}{'ratio':>8}")
    for key, label in [
        ("edit_p50", "edit-config p50"), ("edit_p99", "edit-config p99"),
        ("setup_p50", "session set-up p50"), ("setup_p99", "session set-up p99"),
        ("get10k_p50", f"get-config {args.entries} p50"),
        ("bulk1k_edit", "edit-config +1,000 p50"),
    ]:
        print(f"{label:<28}{a[key]:>12.2f}{b[key]:>12.2f}{a[key] / b[key]:>8.2f}")
    ok = a["edit_p50"] <= b["edit_p50"] and a["edit_p50"] <= 3.0
    print(f"\ntarget (edit-config p50 <= netconfd and <= 3 ms): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
