"""High-level SPD/SAD operations: the calls the xfrm applier makes.

Each method maps to one row of the PF_KEY→netlink table of the I2NSF design
(SADB_ADD→NEWSA, SADB_GETSPI→ALLOCSPI, SADB_X_SPDADD→NEWPOLICY, ...).  Kernel
refusals surface as :class:`XfrmError` (errno + the kernel's extended-ack text);
a refusal caused by a kernel built without ESP/AH or without an algorithm becomes
:class:`XfrmUnsupportedError` with a message that says so, because on such hosts the
agent must switch to its userspace ESP backend rather than report a config error.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import netlink as nl
from .model import (
    Dir,
    Mark,
    Mode,
    Policy,
    PolicyType,
    Proto,
    Selector,
    State,
    policy_id_body,
    sa_id_body,
)
from .nlsocket import XfrmBatchError, XfrmError, XfrmSocket, XfrmUnsupportedError

log = logging.getLogger(__name__)

_SA_WRITES = (nl.XFRM_MSG_NEWSA, nl.XFRM_MSG_UPDSA, nl.XFRM_MSG_ALLOCSPI)


def explain(err: XfrmError, proto: int | None = None) -> XfrmError:
    """Turn "the kernel has no such type/algorithm" refusals into XfrmUnsupportedError.

    The kernel answers EPROTONOSUPPORT "Requested type not found" when esp4/esp6
    (or ah4/ah6, ipcomp) are not available, and ENOSYS "Requested ... algorithm not
    found" when a crypto module is missing.
    """
    if err.msg_type not in _SA_WRITES:
        return err
    reason = err.reason or ""
    pname = {nl.IPPROTO_ESP: "ESP", nl.IPPROTO_AH: "AH", nl.IPPROTO_COMP: "IPComp"}.get(
        proto or 0, "the IPsec protocol"
    )
    if err.errno in (errno.EPROTONOSUPPORT, errno.ENOENT) and (
        "type not found" in reason or not reason
    ):
        text = (
            f"kernel lacks {pname} support (no esp4/esp6-style module for this family): "
            f"{reason or 'protocol not supported'}"
        )
    elif err.errno == errno.ENOSYS and "algorithm" in reason:
        text = f"kernel lacks a crypto algorithm needed for {pname}: {reason}"
    else:
        return err
    return XfrmUnsupportedError(err.errno, reason, err.msg_type, err.index, text=text)


@dataclass(slots=True)
class BatchOp:
    """One entry of a batch: the request and the object it came from."""

    msg_type: int
    flags: int
    body: bytes
    item: object = None
    proto: int | None = None


class Batch:
    """Collects SPD/SAD changes and submits them in as few sends as possible.

    ``submit()`` returns one result per entry (None or an XfrmError whose ``index``
    is the entry's position); it does not stop at the first failure, the kernel
    applies the others — rollback is the applier's decision.
    """

    def __init__(self, xfrm: Xfrm) -> None:
        self.xfrm = xfrm
        self.ops: list[BatchOp] = []

    def __len__(self) -> int:
        return len(self.ops)

    def add_policy(self, p: Policy) -> None:
        self.ops.append(BatchOp(nl.XFRM_MSG_NEWPOLICY, nl.NLM_F_CREATE | nl.NLM_F_EXCL,
                                p.pack(), p))

    def update_policy(self, p: Policy) -> None:
        self.ops.append(BatchOp(nl.XFRM_MSG_UPDPOLICY, 0, p.pack(), p))

    def delete_policy(self, p: Policy) -> None:
        self.ops.append(BatchOp(nl.XFRM_MSG_DELPOLICY, 0, p.pack_id(), p))

    def add_state(self, s: State) -> None:
        self.ops.append(BatchOp(nl.XFRM_MSG_NEWSA, nl.NLM_F_CREATE | nl.NLM_F_EXCL, s.pack(),
                                s, s.proto))

    def update_state(self, s: State) -> None:
        self.ops.append(BatchOp(nl.XFRM_MSG_UPDSA, 0, s.pack(), s, s.proto))

    def delete_state(self, s: State) -> None:
        body = sa_id_body(s.dst, s.spi, s.proto, s.mark, s.if_id)
        self.ops.append(BatchOp(nl.XFRM_MSG_DELSA, 0, body, s))

    def submit(self, raise_on_error: bool = False) -> list[XfrmError | None]:
        results = self.xfrm.sock.batch([(o.msg_type, o.flags, o.body) for o in self.ops])
        for i, r in enumerate(results):
            if r is not None:
                results[i] = explain(r, self.ops[i].proto)
        failed = [r for r in results if r is not None]
        if failed:
            log.info("batch: %d of %d entries failed; first: %s", len(failed), len(results),
                     failed[0])
        if raise_on_error and failed:
            raise XfrmBatchError(results)
        return results


class Xfrm:
    """SPD/SAD of one network namespace (``netns`` None: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = XfrmSocket(netns)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Xfrm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batch(self) -> Batch:
        return Batch(self)

    # -- SPD -----------------------------------------------------------------------

    def add_policy(self, p: Policy) -> None:
        """SADB_X_SPDADD: fails with EEXIST if an entry with the same key exists."""
        self.sock.request(nl.XFRM_MSG_NEWPOLICY, p.pack(), nl.NLM_F_CREATE | nl.NLM_F_EXCL)

    def update_policy(self, p: Policy) -> None:
        """SADB_X_SPDUPDATE: replaces the entry with the same key (or creates it)."""
        self.sock.request(nl.XFRM_MSG_UPDPOLICY, p.pack())

    def add_policies(self, policies: Iterable[Policy]) -> list[XfrmError | None]:
        b = self.batch()
        for p in policies:
            b.add_policy(p)
        return b.submit()

    def delete_policy(
        self,
        selector: Selector | None = None,
        dir: Dir | str | int = Dir.OUT,
        *,
        index: int = 0,
        mark: Mark | None = None,
        if_id: int | None = None,
        ptype: PolicyType | int = PolicyType.MAIN,
    ) -> None:
        """SADB_X_SPDDELETE (by selector+dir) / SPDDELETE2 (by ``index``)."""
        self.sock.request(nl.XFRM_MSG_DELPOLICY,
                          policy_id_body(selector, dir, index, mark, if_id, ptype))

    def get_policy(
        self,
        selector: Selector | None = None,
        dir: Dir | str | int = Dir.OUT,
        *,
        index: int = 0,
        mark: Mark | None = None,
        if_id: int | None = None,
        ptype: PolicyType | int = PolicyType.MAIN,
    ) -> Policy:
        """SADB_X_SPDGET: raises XfrmError(ENOENT) when absent."""
        replies = self.sock.request(
            nl.XFRM_MSG_GETPOLICY, policy_id_body(selector, dir, index, mark, if_id, ptype)
        )
        return Policy.from_msg(replies[0])

    def dump_policies(self) -> list[Policy]:
        """SADB_X_SPDDUMP (NLM_F_DUMP on GETPOLICY)."""
        return [Policy.from_msg(m) for m in self.sock.dump(nl.XFRM_MSG_GETPOLICY)
                if m["header"]["type"] == nl.XFRM_MSG_NEWPOLICY]

    def flush_policies(self, ptype: PolicyType | int | None = None) -> None:
        """SADB_X_SPDFLUSH: all policies (of ``ptype`` if given)."""
        body = b""
        if ptype is not None:
            body = nl.XfrmUserpolicyType.pack({"type": int(ptype)})
            body = b"".join((b"\x0a\x00\x10\x00", body, b"\0\0"))  # NLA(6B) padded to 8
        self.sock.request(nl.XFRM_MSG_FLUSHPOLICY, body)

    # -- SAD -----------------------------------------------------------------------

    def _sa_request(self, msg_type: int, body: bytes, flags: int, proto: int) -> list:
        try:
            return self.sock.request(msg_type, body, flags)
        except XfrmError as e:
            raise explain(e, proto) from None

    def add_state(self, s: State) -> None:
        """SADB_ADD: fails with EEXIST if (dst, spi, proto[, mark]) exists."""
        self._sa_request(nl.XFRM_MSG_NEWSA, s.pack(), nl.NLM_F_CREATE | nl.NLM_F_EXCL, s.proto)

    def update_state(self, s: State) -> None:
        """SADB_UPDATE: completes a larval SA from ALLOCSPI, or changes an SA."""
        self._sa_request(nl.XFRM_MSG_UPDSA, s.pack(), 0, s.proto)

    def add_states(self, states: Iterable[State]) -> list[XfrmError | None]:
        b = self.batch()
        for s in states:
            b.add_state(s)
        return b.submit()

    def delete_state(
        self, dst: str, spi: int, proto: Proto | int = Proto.ESP, *,
        mark: Mark | None = None, if_id: int | None = None,
    ) -> None:
        """SADB_DELETE."""
        self.sock.request(nl.XFRM_MSG_DELSA, sa_id_body(dst, spi, proto, mark, if_id))

    def get_state(
        self, dst: str, spi: int, proto: Proto | int = Proto.ESP, *,
        mark: Mark | None = None, if_id: int | None = None,
    ) -> State:
        """SADB_GET: raises XfrmError(ESRCH) when absent."""
        replies = self.sock.request(nl.XFRM_MSG_GETSA, sa_id_body(dst, spi, proto, mark, if_id))
        return State.from_msg(replies[0])

    def dump_states(self, proto: Proto | int | None = None) -> list[State]:
        """SADB_DUMP (NLM_F_DUMP on GETSA), optionally of one protocol (filtered here:
        the kernel's XFRMA_PROTO filter needs a policy-checked header we don't send)."""
        out = [State.from_msg(m) for m in self.sock.dump(nl.XFRM_MSG_GETSA)
               if m["header"]["type"] == nl.XFRM_MSG_NEWSA]
        if proto is not None and proto != Proto.ANY:
            out = [s for s in out if s.proto == proto]
        return out

    def flush_states(self, proto: Proto | int = Proto.ANY) -> None:
        """SADB_FLUSH (IPSEC_PROTO_ANY: ESP, AH and IPComp states)."""
        self.sock.request(nl.XFRM_MSG_FLUSHSA, nl.XfrmUsersaFlush.pack({"proto": int(proto)})
                          + b"\0\0\0")

    def allocspi(
        self,
        src: str,
        dst: str,
        proto: Proto | int = Proto.ESP,
        *,
        spi_min: int = 0x100,
        spi_max: int = 0x0FFFFFFF,
        reqid: int = 0,
        mode: Mode | int = Mode.TRANSPORT,
        mark: Mark | None = None,
        if_id: int | None = None,
        seq: int = 0,
    ) -> State:
        """SADB_GETSPI: the kernel picks an unused SPI in [spi_min, spi_max] and keeps a
        larval SA for it, to be completed with :meth:`update_state`."""
        larval = State(src=src, dst=dst, spi=0, proto=proto, mode=mode, reqid=reqid,
                       seq=seq)
        body = larval.pack_info() + nl.XfrmUserspiInfo.RANGE.pack(spi_min, spi_max)
        from .model import _common_attrs  # local: private helper shared with model

        body += b"".join(_common_attrs(mark, if_id))
        replies = self._sa_request(nl.XFRM_MSG_ALLOCSPI, body, 0, int(proto))
        return State.from_msg(replies[0])


def first_error(results: Sequence[XfrmError | None]) -> XfrmError | None:
    return next((r for r in results if r is not None), None)


def probe_esp(netns: str | None = None) -> XfrmUnsupportedError | None:
    """Whether this kernel can hold ESP SAs (AES-CBC + HMAC-SHA256): None if yes,
    else the refusal.  The agent uses it to choose between the xfrm backend and the
    userspace ESP backend; tests use it to skip SAD checks on kernels without ESP.

    Probes with a throw-away SA (TEST-NET-3 addresses, SPI 0x1) that is removed again.
    """
    from .model import Algorithm, Algorithms, AuthAlgorithm

    probe = State(
        src="203.0.113.254", dst="203.0.113.253", spi=1, proto=Proto.ESP,
        algorithms=Algorithms(crypt=Algorithm("cbc(aes)", bytes(16)),
                              auth=AuthAlgorithm("hmac(sha256)", bytes(32), 128)),
    )
    with Xfrm(netns) as x:
        try:
            x.add_state(probe)
        except XfrmUnsupportedError as e:
            return e
        except XfrmError as e:
            if e.errno != errno.EEXIST:
                raise
        x.delete_state(probe.dst, probe.spi, probe.proto)
    return None
