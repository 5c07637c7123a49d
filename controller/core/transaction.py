"""All-or-nothing edits across several NSFs (ARCHITECTURE decision 6).

A flow touches two NSFs; a half-built tunnel (SAs on one side only) is worse than none. So:

  1. prepare, on every NSF at once: lock candidate, edit-config candidate with
     test-then-set (the NSF validates the complete candidate);
  2. commit with <confirmed/> and a persist token on every NSF;
  3. confirm (commit with <persist-id>) on every NSF; unlock.

Any failure before step 3 undoes everything: discard-changes on NSFs that were prepared,
cancel-commit (by persist-id) on NSFs that committed. The persist token lets the controller
confirm or cancel from a new session if the one that committed is lost; an NSF whose
controller vanished rolls back by itself when the confirm timeout runs out. A transaction
on a single NSF needs no second phase: its plain commit is atomic on that NSF.

Callers hold every involved `NsfSession.lock` (taken in name order, so two transactions never
wait on each other in a cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from lxml import etree

from controller.core.nc_client import NcClient, NcError, NcRpcError, op
from controller.core.southbound import NsfSession

log = logging.getLogger(__name__)


class TransactionError(Exception):
    """The transaction failed and was rolled back on every NSF.

    `refused`: NSFs that answered with an rpc-error about the content (a bad entry: the
    culprit is among the changes sent to them); `down`: NSFs that could not take part (no
    session, no reply, lost session, candidate locked by someone else). A caller that
    combined many changes uses them to find out which changes to retry without the rest."""

    def __init__(self, nsf: str, step: str, cause: str, *,
                 refused: Iterable[str] = (), down: Iterable[str] = (),
                 failed: Iterable[tuple[str, BaseException]] = ()) -> None:
        self.nsf, self.step, self.cause = nsf, step, cause
        self.refused, self.down = set(refused), set(down)
        if not self.refused and not self.down:
            self.down.add(nsf)
        # each failed NSF's own error, for reporting per NSF
        self.reasons = {n: f"NSF {n}: {step} failed: {str(e) or type(e).__name__}"
                        for n, e in failed if not isinstance(e, _NotCommitted)}
        super().__init__(f"NSF {nsf}: {step} failed: {cause}")


_TRANSIENT_TAGS = ("lock-denied", "in-use", "resource-denied")


def _classify(failed: list[tuple[str, BaseException]]) -> dict[str, set[str]]:
    """Split failed NSFs into those that refused the content and those that were down."""
    out: dict[str, set[str]] = {"refused": set(), "down": set()}
    for n, err in failed:
        content = isinstance(err, NcRpcError) and not isinstance(err, _NotCommitted) and (
            err.tag not in _TRANSIENT_TAGS)
        if isinstance(err, _NotCommitted):
            continue  # left out of an ordered commit: neither guilty nor down
        out["refused" if content else "down"].add(n)
    return out


@asynccontextmanager
async def locked(sessions: Mapping[str, NsfSession]) -> AsyncIterator[None]:
    """Hold the controller-side lock of every NSF in `sessions` (name order)."""
    async with AsyncExitStack() as stack:
        for name in sorted(sessions):
            await stack.enter_async_context(sessions[name].lock)
        yield


def _client(s: NsfSession) -> NcClient:
    c = s.client
    if c is None or c.closed.is_set():
        raise NcError("no session (NSF unreachable)")
    return c


Edit = etree._Element | bytes  # a <config> element, or its serialisation


async def _prepare(s: NsfSession, edit: Edit, timeout: float) -> None:
    c = _client(s)
    try:
        await c.rpc(op("lock", {"target": ["candidate"]}), timeout)
    except NcRpcError as exc:
        if exc.tag not in ("lock-denied", "in-use", "resource-denied"):
            raise
        # Leftover candidate changes (e.g. of a session that died) block the lock: drop them.
        await c.rpc(op("discard-changes"), timeout)
        await c.rpc(op("lock", {"target": ["candidate"]}), timeout)
    # A granted lock means the candidate equals running (a modified candidate refuses the
    # lock), so the edit starts from running. test-then-set validates the whole resulting
    # candidate with libyang: that is the validation step (a separate <validate> would
    # validate the same tree a second time on every NSF).
    body = (b'<edit-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
            b"<target><candidate/></target><default-operation>merge</default-operation>"
            b"<test-option>test-then-set</test-option><error-option>rollback-on-error"
            b"</error-option>") + (edit if isinstance(edit, bytes) else etree.tostring(edit)
                                    ) + b"</edit-config>"
    await c.rpc(body, timeout)


async def _undo_prepare(s: NsfSession, timeout: float) -> None:
    c = s.client
    if c is None or c.closed.is_set():
        return  # the agent discards a dead session's candidate and releases its lock
    with contextlib.suppress(NcError, asyncio.TimeoutError):
        await c.rpc(op("discard-changes"), timeout)
    with contextlib.suppress(NcError, asyncio.TimeoutError):
        await c.rpc(op("unlock", {"target": ["candidate"]}), timeout)


async def _with_session(s: NsfSession, body: bytes, timeout: float, patience: float
                        ) -> None:
    """Send `body`, waiting up to `patience` for the session to come back if it is down
    (confirm/cancel by persist-id works from any session)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            await _client(s).rpc(body, timeout)
            return
        except NcRpcError:
            raise
        except NcError:
            left = deadline - loop.time()
            if left <= 0:
                raise
            await s.wait_up(left)


Journal = Callable[[list[str], str | None], None]


class _NotCommitted(NcRpcError):
    """An NSF left out of an ordered commit because an earlier one failed."""


async def transact(sessions: Mapping[str, NsfSession], edits: Mapping[str, Edit],
                   *, timeout: float = 30.0, confirm_timeout: int = 60,
                   journal: Journal | None = None,
                   commit_order: list[str] | None = None) -> None:
    """Apply `edits` (NSF name → `<config>`) on all NSFs or on none. Raises TransactionError.

    `commit_order` (IKE case) makes the confirmed commits one NSF after the other in that
    order instead of all at once: an IKE responder must hold its connection before the
    initiator's charon starts negotiating, or the first exchange fails for good.

    `journal(nsfs, persist_id)` is called before the confirmed commits and with None once
    they are confirmed or cancelled, so that a controller that crashed in between can
    cancel them from its next life instead of waiting for the NSFs' confirm timeout."""
    names = sorted(edits)
    down = [n for n in names  # fail before touching anything if an NSF is known to be down
            if sessions[n].client is None or sessions[n].client.closed.is_set()]  # type: ignore[union-attr]
    if down:
        n = down[0]
        raise TransactionError(n, "connect", sessions[n].last_error or "NSF unreachable",
                               down=down)
    persist = uuid.uuid4().hex
    t0 = time.monotonic()
    results = await asyncio.gather(*(_prepare(sessions[n], edits[n], timeout) for n in names),
                                   return_exceptions=True)
    log.debug("transaction on %d NSFs: candidates edited in %.3f s", len(names),
              time.monotonic() - t0)
    failed = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        await asyncio.gather(*(_undo_prepare(sessions[n], timeout) for n in names))
        n, err = failed[0]
        raise TransactionError(n, "edit/validate", str(err) or type(err).__name__,
                               failed=failed, **_classify(failed))
    if len(names) == 1 and commit_order is None:
        await _commit_one(sessions[names[0]], names[0], timeout)
        return

    t1 = time.monotonic()
    if journal is not None:
        journal(names, persist)
    t2 = time.monotonic()
    unresolved: list[str] = []
    try:
        await _commit_and_confirm(sessions, names, persist, timeout, confirm_timeout,
                                  unresolved, commit_order)
    finally:
        t3 = time.monotonic()
        # NSFs whose confirmed commit could be neither confirmed nor cancelled keep their
        # journal entry: the next transaction or connection cancels it by persist-id.
        if journal is not None:
            journal([n for n in names if n not in unresolved], None)
        log.debug("transaction on %d NSFs: journal %.3f s, commit and confirm %.3f s, "
                  "journal %.3f s", len(names), t2 - t1, t3 - t2, time.monotonic() - t3)


async def _commit_and_confirm(sessions: Mapping[str, NsfSession], names: list[str],
                              persist: str, timeout: float, confirm_timeout: int,
                              unresolved: list[str], order: list[str] | None = None) -> None:
    commit = op("commit", {"confirmed": None, "confirm-timeout": confirm_timeout,
                           "persist": persist})
    if order is None:
        results: list[object] = list(await asyncio.gather(
            *(_client(sessions[n]).rpc(commit, timeout) for n in names),
            return_exceptions=True))
    else:
        seq = [n for n in order if n in names] + [n for n in names if n not in order]
        by_name: dict[str, object] = {}
        for n in seq:  # stop at the first failure; the rest count as not committed
            try:
                by_name[n] = await _client(sessions[n]).rpc(commit, timeout)
            except Exception as exc:  # reported like gather's results
                by_name[n] = exc
                for rest in seq[seq.index(n) + 1:]:
                    by_name[rest] = _NotCommitted([])
                break
        results = [by_name[n] for n in names]
    committed = [n for n, r in zip(names, results, strict=True)
                 if not isinstance(r, BaseException)]
    failed = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    # A commit whose reply was lost may have happened: cancel it later by persist-id.
    unresolved.extend(n for n, r in failed if not isinstance(r, NcRpcError))
    if failed:
        cancel = op("cancel-commit", {"persist-id": persist})
        undo = await asyncio.gather(
            *(_with_session(sessions[n], cancel, timeout, min(10.0, confirm_timeout / 2))
              for n in committed), return_exceptions=True)
        for n, r in zip(committed, undo, strict=True):
            if isinstance(r, BaseException):
                unresolved.append(n)
                log.error("NSF %s: cancel-commit failed (%s); its confirmed commit rolls back "
                          "by itself within %d s", n, r, confirm_timeout)
        await asyncio.gather(*(_undo_prepare(sessions[n], timeout) for n in names))
        n, err = next((f for f in failed if not isinstance(f[1], _NotCommitted)), failed[0])
        raise TransactionError(n, "confirmed commit", str(err) or type(err).__name__,
                               failed=failed, **_classify(failed))

    confirm = op("commit", {"persist-id": persist})

    async def confirm_and_unlock(n: str) -> None:
        # each NSF is unlocked as soon as it is confirmed (no barrier across NSFs)
        try:
            await _with_session(sessions[n], confirm, timeout, min(10.0, confirm_timeout / 2))
        finally:
            await _unlock(sessions[n], timeout)

    results = await asyncio.gather(*(confirm_and_unlock(n) for n in names),
                                   return_exceptions=True)
    failed = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    unresolved.extend(n for n, _ in failed)
    if failed:
        # Confirmed elsewhere, rolling back here: the caller retries the (idempotent) edit.
        n, err = failed[0]
        raise TransactionError(n, "confirm", str(err) or type(err).__name__,
                               down=[f[0] for f in failed], failed=failed)


async def _commit_one(s: NsfSession, name: str, timeout: float) -> None:
    """The commit of a one-NSF transaction: plain (nothing to keep in step with)."""
    try:
        await _client(s).rpc(op("commit"), timeout)
    except NcError as exc:
        await _undo_prepare(s, timeout)
        raise TransactionError(name, "commit", str(exc) or type(exc).__name__,
                               **_classify([(name, exc)])) from exc
    await _unlock(s, timeout)


async def _unlock(s: NsfSession, timeout: float) -> None:
    c = s.client
    if c is not None and not c.closed.is_set():
        with contextlib.suppress(NcError, asyncio.TimeoutError):
            await c.rpc(op("unlock", {"target": ["candidate"]}), timeout)


async def cancel_leftover(s: NsfSession, persist: str, timeout: float) -> bool:
    """Cancel a confirmed commit left by an earlier transaction (crash, lost session).
    True if it is gone (cancelled now, or already confirmed/rolled back)."""
    try:
        await _client(s).rpc(op("cancel-commit", {"persist-id": persist}), timeout)
        log.warning("NSF %s: cancelled a confirmed commit left unconfirmed", s.name)
    except NcRpcError:
        pass  # nothing pending under that id any more
    except NcError:
        return False
    return True
