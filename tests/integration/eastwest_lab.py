"""Two controllers, each managing one gateway of the gateway lab (seed section 10.2).

    hostA ── gwA ══ gwB ── hostB          data plane (userspace ESP)
              │      │
           ctl-a ⇄ ctl-b                   mgmt namespace: ctl-a on 8300 manages gwA only,
                                           ctl-b on 8301 gwB only; they talk NETCONF over SSH
                                           to each other with pinned host keys and one
                                           account per peer (peer-a on ctl-b, peer-b on ctl-a)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway_lab import ADMIN_PASSWORD, BIN, CTL_PORT, Daemon, GatewayLab, write_key

from controller.core.inventory import NS as FP
from netconf_core.auth import hash_password
from nsf_agent.userspace.lab import in_netns, unique_prefix

EW = "urn:i2nsf-sdn:yang:i2nsf-east-west"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
PORTS = {"a": CTL_PORT, "b": CTL_PORT + 1}


class EastWestLab(GatewayLab):
    ctls: dict[str, Daemon]
    ctl_host_keys: dict[str, str]

    def setup_controller(self) -> None:
        self.ctls, self.ctl_host_keys = {}, {}
        peer_pub = {s: write_key(self.workdir / f"peer_{s}_id") for s in "ab"}
        for s, other in (("a", "b"), ("b", "a")):
            st = self.workdir / f"controller-{s}"
            self.ctl_host_keys[s] = write_key(st / "ssh_host_ed25519_key")
            cfg = self.workdir / f"controller-{s}.toml"
            cfg.write_text(
                f'[server]\nhost = "127.0.0.1"\nport = {PORTS[s]}\nstate_dir = "{st}"\n\n'
                "[controller]\nreconnect_min = 0.2\nreconnect_max = 2.0\nretry_max = 2.0\n"
                "confirm_timeout = 30\n\n"
                f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(ADMIN_PASSWORD)}"'
                f'\n\n[[users]]\nname = "peer-{other}"\n'
                f'authorized_keys = ["{peer_pub[other]}"]\n')
            self.ctls[s] = Daemon(
                f"controller {s}", self.mgmt,
                [str(BIN / "python"), "-m", "controller.cli", "serve", "-c", str(cfg),
                 "--ready-file", str(self.workdir / f"controller-{s}.ready"),
                 "--log-level", "DEBUG"],
                self.workdir / f"controller-{s}.log", self.workdir / f"controller-{s}.ready")
        self.controller = self.ctls["a"]  # GatewayLab.start starts it

    def start(self) -> None:
        super().start()
        self.ctls["b"].start()

    def destroy(self) -> None:
        for d in getattr(self, "ctls", {}).values():
            with contextlib.suppress(Exception):
                d.stop(5)
        super().destroy()

    def connect_ctl(self, side: str, user: str = "admin", key: Path | None = None) -> Any:
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001
        with in_netns(self.mgmt):
            if key is not None:
                return manager.connect(host="127.0.0.1", port=PORTS[side], username=user,
                                       key_filename=str(key), hostkey_verify=False,
                                       allow_agent=False, look_for_keys=False, timeout=30)
            return manager.connect(host="127.0.0.1", port=PORTS[side], username=user,
                                   password=ADMIN_PASSWORD, hostkey_verify=False,
                                   allow_agent=False, look_for_keys=False, timeout=30)

    def east_west_xml(self, side: str, policy: str = "", algorithms: str = "",
                      remote_prefix: str = "") -> str:
        """The flow inventory with this side's NSF only, and the east-west config."""
        other = "b" if side == "a" else "a"
        inv = self.inventory_xml(sides=(side,), policy=None)
        inv = inv.removesuffix("</flow-protection></config>") + "</flow-protection>"
        pol = ""
        if policy:
            pol = (f"<policy><name>{policy}</name><local-nsf>gw{side}</local-nsf>"
                   f"<remote-prefix>{remote_prefix}</remote-prefix>{algorithms}</policy>")
        ew = (f'<east-west xmlns="{EW}"><controller-id>ctl-{side}</controller-id>'
              f"<peer><name>ctl-{other}</name><address>127.0.0.1</address>"
              f"<port>{PORTS[other]}</port><username>peer-{side}</username>"
              f"<private-key-file>{self.workdir / f'peer_{side}_id'}</private-key-file>"
              f"<host-key>{self.ctl_host_keys[other]}</host-key>"
              f"<local-account>peer-{other}</local-account></peer>{pol}</east-west>")
        return inv + ew + "</config>"


@contextlib.contextmanager
def eastwest_lab(tag: str) -> Iterator[EastWestLab]:
    work = Path(tempfile.mkdtemp(prefix=f"i2nsf-{tag}-"))
    lab = EastWestLab(unique_prefix(tag), work)
    try:
        lab.start()
        yield lab
    finally:
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["EW", "FP", "NC", "EastWestLab", "eastwest_lab"]
