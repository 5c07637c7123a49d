"""recvmmsg(2)/sendmmsg(2) through ctypes: one system call for a batch of datagrams.

Per-packet system calls, not cryptography, bound a Python data path; these batch them.
Buffers and message headers are allocated once per batch object and reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MSG_DONTWAIT = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        lib = ctypes.CDLL(name, use_errno=True)
        for fn in (lib.recvmmsg, lib.sendmmsg):
            fn.restype = ctypes.c_int
        lib.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint,
                                 ctypes.c_int, ctypes.c_void_p]
        lib.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint,
                                 ctypes.c_int]
        _libc = lib
    return _libc


def available() -> bool:
    try:
        return _lib() is not None
    except (OSError, AttributeError):
        return False


class RecvBatch:
    """Receive up to `n` datagrams of at most `size` bytes with one recvmmsg call."""

    def __init__(self, fd: int, n: int, size: int) -> None:
        lib = _lib()
        assert lib is not None
        self._fn = lib.recvmmsg
        self.fd = fd
        self.n = n
        self._bufs = [ctypes.create_string_buffer(size) for _ in range(n)]
        self._addrs = [ctypes.addressof(b) for b in self._bufs]
        self._iov = (_Iovec * n)()
        self._msgs = (_Mmsghdr * n)()
        for i, b in enumerate(self._bufs):
            self._iov[i].iov_base = ctypes.addressof(b)
            self._iov[i].iov_len = size
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1

    def recv(self) -> list[bytes]:
        got = self._fn(self.fd, self._msgs, self.n, MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (11, 4):  # EAGAIN, EINTR
                return []
            raise OSError(err, os.strerror(err))
        msgs = self._msgs
        at = ctypes.string_at
        addrs = self._addrs
        return [at(addrs[i], msgs[i].msg_len) for i in range(got)]


class SendBatch:
    """Send already-addressed datagrams (connected or header-including sockets) in one call."""

    def __init__(self, fd: int, n: int, name: bytes | None = None) -> None:
        lib = _lib()
        assert lib is not None
        self._fn = lib.sendmmsg
        self.fd = fd
        self.n = n
        self._iov = (_Iovec * n)()
        self._msgs = (_Mmsghdr * n)()
        self._name = ctypes.create_string_buffer(name) if name else None
        for i in range(n):
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1

    def send(self, packets: list[bytes], names: list[ctypes.Array[ctypes.c_char]]) -> int:
        """Send `packets[i]` to the sockaddr `names[i]`; returns how many went out."""
        sent = 0
        while sent < len(packets):
            chunk = packets[sent:sent + self.n]
            for i, p in enumerate(chunk):
                self._iov[i].iov_base = ctypes.cast(ctypes.c_char_p(p), ctypes.c_void_p)
                self._iov[i].iov_len = len(p)
                nm = names[sent + i]
                self._msgs[i].msg_hdr.msg_name = ctypes.addressof(nm)
                self._msgs[i].msg_hdr.msg_namelen = len(nm)
            r = self._fn(self.fd, self._msgs, len(chunk), 0)
            if r < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            sent += r
            if r < len(chunk):
                break
        return sent
