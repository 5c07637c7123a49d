"""A charon of the agent's own, and a thread-safe vici client.

Several agents may share one machine (one per network namespace in tests and labs), so each
charon gets its own strongswan.conf (STRONGSWAN_CONF), its own vici socket in the agent's
state directory and its own `/run` (charon keeps its pid file there and refuses to start
when another charon's pid file is found): the process is started through `unshare --mount`
with a private directory bind-mounted on /run. With `netns`, it is started inside that
network namespace through `ip netns exec` (an agent running inside the namespace itself
leaves `netns` unset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vici
import vici.exception

log = logging.getLogger(__name__)

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# Order matters: kernel-libipsec must come before kernel-netlink to own the IPsec backend.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "random", "nonce", "openssl", "aes", "des", "sha1", "sha2", "md5", "hmac", "gcm", "ccm",
    "ctr", "cmac", "xcbc", "chapoly", "curve25519", "gmp", "kdf", "pem", "pkcs1", "pkcs8",
    "x509", "pubkey", "revocation", "constraints", "eap-identity", "eap-md5",
    "eap-mschapv2", "eap-gtc", "eap-tls", "eap-ttls", "eap-peap", "eap-aka", "eap-sim",
    "kernel-libipsec", "kernel-netlink", "socket-default", "vici",
)


class CharonError(RuntimeError):
    """charon could not be started or reached."""


class ViciError(RuntimeError):
    """charon refused a vici command; the message is charon's own."""


def _plugin_available(name: str) -> bool:
    return (PLUGIN_DIR / f"libstrongswan-{name}.so").exists()


@dataclass
class CharonSettings:
    """What goes into our strongswan.conf."""

    libipsec: bool = False
    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    port: int = 500
    port_nat_t: int = 4500
    fragment_size: int = 1280
    half_open_timeout: int = 30
    cookie_threshold: int = 10
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 3
    loglevel: int = 1  # never above 2: level 4 would log key material
    # a gateway hands out virtual IPs but never takes one; a road-warrior host (tests) does
    install_virtual_ip: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # more charon.<key> = value

    def render(self, vici_socket: Path, logfile: Path) -> str:
        plugins = [p for p in self.plugins if _plugin_available(p)
                   and (p != "kernel-libipsec" or self.libipsec)]
        level = min(self.loglevel, 2)
        extra = "".join(f"  {k} = {v}\n" for k, v in sorted(self.extra.items()))
        return (
            "# written by the i2nsf agent; edits are overwritten\n"
            "charon {\n"
            "  load_modular = no\n"
            f"  load = {' '.join(plugins)}\n"
            f"  port = {self.port}\n"
            f"  port_nat_t = {self.port_nat_t}\n"
            f"  fragment_size = {self.fragment_size}\n"
            f"  half_open_timeout = {self.half_open_timeout}\n"
            f"  cookie_threshold = {self.cookie_threshold}\n"
            f"  retransmit_timeout = {self.retransmit_timeout}\n"
            f"  retransmit_tries = {self.retransmit_tries}\n"
            f"  install_virtual_ip = {'yes' if self.install_virtual_ip else 'no'}\n"
            f"{extra}"
            "  filelog {\n"
            "    agent {\n"
            f"      path = {logfile}\n"
            f"      default = {level}\n"
            "      flush_line = yes\n"
            "      time_format = %b %e %T\n"
            "      ike_name = yes\n"
            "    }\n"
            "  }\n"
            "  syslog {\n"
            "  }\n"
            "  plugins {\n"
            "    vici {\n"
            f"      socket = unix://{vici_socket}\n"
            "    }\n"
            "  }\n"
            "}\n"
        )


def connect(path: Path, timeout: float = 30.0) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return vici.Session(sock)


class Vici:
    """One vici session shared by the agent's threads (requests are serialised).
    Reconnects on the next request after charon went away."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._session: vici.Session | None = None
        self._lock = threading.RLock()

    def _s(self) -> vici.Session:
        if self._session is None:
            try:
                self._session = connect(self.path, self.timeout)
            except OSError as exc:
                raise CharonError(f"cannot reach charon at {self.path}: {exc}") from exc
        return self._session

    def _drop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(OSError):
                self._session.transport.socket.close()
        self._session = None

    def _call(self, fn: Callable[[vici.Session], Any], command: str) -> Any:
        """Run `fn` on the session. A session left over from a charon that has since been
        restarted fails on its first send: that one is retried once on a new connection
        (nothing reached charon, so nothing runs twice)."""
        with self._lock:
            for attempt in (0, 1):
                fresh = self._session is None
                try:
                    return fn(self._s())
                except vici.exception.CommandException as exc:
                    raise ViciError(str(exc).removeprefix("Command failed: ")) from None
                except (BrokenPipeError, ConnectionResetError) as exc:
                    self._drop()
                    if fresh or attempt:
                        raise CharonError(f"vici {command}: {exc}") from exc
                except (OSError, vici.exception.SessionException,
                        vici.exception.DeserializationException) as exc:
                    self._drop()
                    raise CharonError(f"vici {command}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def request(self, command: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self._call(lambda s: s.request(command, message), command))

    def stream(self, command: str, event: str,
               message: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._call(
            lambda s: [dict(m) for m in s.streamed_request(command, event, message)], command)

    def alive(self) -> bool:
        try:
            self.request("version")
            return True
        except (CharonError, ViciError):
            return False

    def close(self) -> None:
        with self._lock:
            self._drop()


def events(path: Path, names: list[str], stop: threading.Event,
           poll: float = 0.5) -> Iterator[tuple[str, dict[str, Any]]]:
    """vici events until `stop` is set; reconnects (with back-off) while charon is away."""
    delay = 0.2
    while not stop.is_set():
        try:
            session = connect(path, timeout=10.0)
        except OSError:
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        try:
            for name, msg in session.listen(names, timeout=poll):
                if stop.is_set():
                    break
                if name is None:
                    continue
                yield (name.decode() if isinstance(name, bytes) else name), dict(msg)
        except (OSError, vici.exception.SessionException,
                vici.exception.DeserializationException) as exc:
            log.debug("vici event stream ended: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                session.transport.socket.close()


class Charon:
    """Our own charon process: writes its strongswan.conf, starts it, restarts it when it
    dies (then calls `on_restart` so that the applier loads its configuration again)."""

    def __init__(
        self,
        state_dir: Path,
        settings: CharonSettings,
        netns: str | None = None,
        binary: str = CHARON,
        on_restart: Callable[[], None] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        if self.state_dir == Path("/run") or Path("/run") in self.state_dir.parents:
            raise ValueError("the agent's state directory must not be below /run: charon's "
                             "private /run is mounted over it")
        self.settings = settings
        self.netns = netns
        self.binary = binary
        self.on_restart = on_restart
        self.start_timeout = start_timeout
        self.conf = self.state_dir / "strongswan.conf"
        self.vici_socket = self.state_dir / "charon.vici"
        self.logfile = self.state_dir / "charon.log"
        self.rundir = self.state_dir / "charon-run"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    # ---- process -------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd: list[str] = []
        if self.netns:
            cmd += ["ip", "netns", "exec", self.netns]
        cmd += ["unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$1" /run && exec "$2"', "charon-run",
                str(self.rundir), self.binary]
        return cmd

    def _spawn(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(mode=0o700, exist_ok=True)
        (self.rundir / "charon.pid").unlink(missing_ok=True)
        self.vici_socket.unlink(missing_ok=True)
        self.conf.write_text(self.settings.render(self.vici_socket, self.logfile))
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "STRONGSWAN_CONF": str(self.conf)}
        out = open(self.state_dir / "charon.stderr", "ab")  # noqa: SIM115 - owned by Popen
        try:
            self.proc = subprocess.Popen(
                self._command(), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CharonError(f"charon exited at start (status {self.proc.returncode}); "
                                  f"see {self.logfile} and {self.state_dir / 'charon.stderr'}")
            if self.vici_socket.exists() and Vici(self.vici_socket, 5.0).alive():
                log.info("charon started (pid %d, netns %s, libipsec %s)", self.proc.pid,
                         self.netns or "-", self.settings.libipsec)
                return
            time.sleep(0.05)
        self._kill()
        raise CharonError(f"charon did not open its vici socket within {self.start_timeout}s")

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self._stop.clear()
            self._spawn()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="charon-watch",
                                                 daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            proc = self.proc
            if proc is None:
                return
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            if self._stop.is_set():
                return
            log.error("charon (pid %d) exited with status %s; restarting", proc.pid,
                      proc.returncode)
            self._stop.wait(backoff)
            if self._stop.is_set():
                return
            try:
                with self._lock:
                    self._spawn()
                self.restarts += 1
                backoff = 0.5
            except CharonError as exc:
                log.error("charon restart failed: %s", exc)
                backoff = min(backoff * 2, 30.0)
                continue
            if self.on_restart is not None:
                try:
                    self.on_restart()
                except Exception:
                    log.exception("reloading configuration into the restarted charon failed")

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._kill()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        log.info("charon stopped")
