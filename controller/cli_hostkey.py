"""The CLI's SSH login to the controller, with the controller's host key verified before
any credential is sent (RFC 4251 section 4.1: a client that does not check the host key is
open to a man in the middle who collects its password).

Where the expected key comes from, first found: `--host-key` (an OpenSSH public key line,
its base64 alone, or a `SHA256:` fingerprint), `--host-key-file` (the controller's
`ssh_host_ed25519_key.pub`), `$I2NSF_CONTROLLER_HOST_KEY_FILE`,
`$I2NSF_CONTROLLER_HOST_KEY`, else `~/.ssh/known_hosts` (`[host]:port` entries, as `ssh`
writes them). No key known, or another key presented: the connection is refused with what
was presented and how to pin it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import os
from typing import Any

from controller.cli_output import CliError

log = logging.getLogger(__name__)


def _pin(args: argparse.Namespace) -> str | None:
    if getattr(args, "host_key", None):
        return str(args.host_key)
    path = getattr(args, "controller_host_key_file", None) or (
        os.environ.get("I2NSF_CONTROLLER_HOST_KEY_FILE") or None)
    if path:
        from pathlib import Path

        path = Path(path)
        try:
            return path.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise CliError(f"cannot read host key file {path}: {exc}", code=2) from exc
    return os.environ.get("I2NSF_CONTROLLER_HOST_KEY") or None


def parse_pin(value: str) -> tuple[str, str]:
    """('sha256', 'SHA256:...') or ('b64', base64 of the key blob)."""
    v = value.strip()
    if v.startswith("SHA256:"):
        return "sha256", v.rstrip("=")
    parts = v.split()
    b64 = parts[1] if len(parts) >= 2 else (parts[0] if parts else "")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    if len(blob) < 16:
        raise CliError(f"--host-key {value!r} is neither an OpenSSH public key "
                       "('ssh-ed25519 AAAA...') nor a SHA256: fingerprint", code=2)
    return "b64", b64


def presented_key(host: str, port: int) -> Any:
    """The host key the server presents (key exchange only: nothing is authenticated)."""
    import asyncssh

    async def fetch() -> Any:
        return await asyncio.wait_for(asyncssh.get_server_host_key(host, port), 15)

    try:
        return asyncio.run(fetch())
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise CliError(f"cannot reach the controller at {host}:{port}: {exc}") from exc


def _fingerprint(key: Any) -> str:
    return str(key.get_fingerprint("sha256"))


def connect(args: argparse.Namespace) -> Any:
    import ncclient.transport.session as nc_session
    from ncclient import manager
    from ncclient.transport.errors import AuthenticationError, SSHError, SSHUnknownHostError

    nc_session.TICK = 0.001  # ncclient otherwise sleeps up to 100 ms per rpc
    logging.getLogger("ncclient").setLevel(logging.WARNING)
    if args.password_file:
        try:
            password: str | None = args.password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise CliError(f"cannot read password file {args.password_file}: {exc}",
                           code=2) from exc
    else:
        password = os.environ.get("I2NSF_PASSWORD")
    if password is None and args.key is None:
        raise CliError("no credentials: give --password-file, --key or set I2NSF_PASSWORD",
                       code=2)
    pin = _pin(args)
    kw: dict[str, Any] = dict(host=args.host, port=args.port, username=args.user,
                              password=password, allow_agent=False, look_for_keys=False,
                              timeout=30, hostkey_verify=True,
                              unknown_host_cb=lambda host, fingerprint: False)
    if args.key:
        kw["key_filename"] = str(args.key)
    if pin is not None:
        kind, value = parse_pin(pin)
        if kind == "sha256":
            key = presented_key(args.host, args.port)
            if _fingerprint(key).rstrip("=") != value:
                raise _mismatch(args, _fingerprint(key), value)
            value = key.export_public_key().decode().split()[1]
        kw["hostkey_b64"] = value  # the real session must present exactly this key
    try:
        return manager.connect(**kw)
    except SSHUnknownHostError:
        got = _fingerprint(presented_key(args.host, args.port))
        if pin is not None:
            raise _mismatch(args, got, pin) from None
        raise CliError(
            f"the controller's host key is not known (it presented {got}); credentials "
            f"were not sent. Pin it with --host-key-file <state_dir>/ssh_host_ed25519_key.pub"
            f" or --host-key {got}, or add it to ~/.ssh/known_hosts as "
            f"[{args.host}]:{args.port}") from None
    except AuthenticationError as exc:
        raise CliError(f"authentication as {args.user!r} failed: {exc}") from exc
    except (SSHError, OSError) as exc:
        raise CliError(f"cannot reach the controller at {args.host}:{args.port}: {exc}"
                       ) from exc


def _mismatch(args: argparse.Namespace, got: str, want: str) -> CliError:
    shown = want if want.startswith("SHA256:") else f"the pinned key ({want[:40]}...)"
    return CliError(
        f"host key mismatch: the controller at {args.host}:{args.port} presented {got}, "
        f"not {shown}; credentials were not sent. If its key was replaced on purpose, "
        "pin the new one (--host-key-file <state_dir>/ssh_host_ed25519_key.pub)")
