"""ctypes binding of the few libbpf calls the fast path needs.

libbpf (Debian's libbpf1, the library iproute2 and bpftool use) loads the ELF object
(maps, relocations, BTF) and wraps the bpf(2) commands for map access. Map writes go
through it directly, one system call each, instead of spawning `bpftool map update`
per entry (see docs/sfc.md, "Fast path", for the measured cost of both).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading

log = logging.getLogger(__name__)

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_ANY = 0
BPF_EXIST = 2


class BpfError(OSError):
    """A libbpf / bpf(2) call failed; errno and the libbpf messages are kept."""


_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lock = threading.Lock()
_messages: list[str] = []  # libbpf's last messages (verifier log on load failure)

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _on_print(level: int, fmt: bytes, va: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, va)
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        _messages.append(text)
        del _messages[:-200]
        log.debug("libbpf: %s", text)
    return 0


_print_cb = _PRINT_FN(_on_print)  # kept referenced for the library's lifetime


def lib() -> ctypes.CDLL:
    """The loaded libbpf, or BpfError saying why it cannot be loaded."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None:
            return _lib
        if _lib_error is not None:
            raise BpfError(errno.ENOENT, _lib_error)
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lb = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            _lib_error = f"libbpf not loadable ({name}): {e} (Debian package libbpf1)"
            raise BpfError(errno.ENOENT, _lib_error) from None
        vp, ci, cu64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
        lb.libbpf_set_print.argtypes = [_PRINT_FN]
        lb.libbpf_set_print.restype = vp
        lb.bpf_object__open_file.argtypes = [ctypes.c_char_p, vp]
        lb.bpf_object__open_file.restype = vp
        lb.bpf_object__load.argtypes = [vp]
        lb.bpf_object__close.argtypes = [vp]
        lb.bpf_object__close.restype = None
        lb.bpf_object__find_program_by_name.argtypes = [vp, ctypes.c_char_p]
        lb.bpf_object__find_program_by_name.restype = vp
        lb.bpf_program__fd.argtypes = [vp]
        lb.bpf_object__find_map_fd_by_name.argtypes = [vp, ctypes.c_char_p]
        lb.bpf_map_update_elem.argtypes = [ci, vp, vp, cu64]
        lb.bpf_map_lookup_elem.argtypes = [ci, vp, vp]
        lb.bpf_map_delete_elem.argtypes = [ci, vp]
        lb.bpf_map_get_next_key.argtypes = [ci, vp, vp]
        lb.bpf_map_freeze.argtypes = [ci]
        lb.bpf_prog_load.argtypes = [ci, ctypes.c_char_p, ctypes.c_char_p, vp, ctypes.c_size_t, vp]
        lb.libbpf_num_possible_cpus.argtypes = []
        lb.libbpf_set_print(_print_cb)
        _lib = lb
        return lb


def last_messages(n: int = 40) -> str:
    return "\n".join(_messages[-n:])


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc != -1 else (ctypes.get_errno() or errno.EIO)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def num_possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def probe_sched_cls() -> None:
    """Load (and close) `r0 = TC_ACT_OK; exit` as SCHED_CLS: the kernel accepts tc programs."""
    insns = (ctypes.c_uint8 * 16)(
        0xB7,
        0,
        0,
        0,
        0,
        0,
        0,
        0,  # BPF_MOV64_IMM(R0, 0)
        0x95,
        0,
        0,
        0,
        0,
        0,
        0,
        0,  # BPF_EXIT
    )
    del _messages[:]
    fd = lib().bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, b"i2nsf_probe", b"GPL", insns, 2, None)
    _check(fd, "bpf(BPF_PROG_LOAD) of a SCHED_CLS program")
    os.close(fd)


class BpfObject:
    """An opened and loaded ELF object; owns its program and map file descriptors."""

    def __init__(self, path: str) -> None:
        lb = lib()
        del _messages[:]
        ctypes.set_errno(0)
        obj = lb.bpf_object__open_file(path.encode(), None)
        if not obj:
            err = ctypes.get_errno() or errno.EINVAL
            raise BpfError(
                err, f"cannot open BPF object {path}: {os.strerror(err)}\n{last_messages()}"
            )
        rc = lb.bpf_object__load(obj)
        if rc < 0:
            lb.bpf_object__close(obj)
            err = -rc
            raise BpfError(
                err, f"kernel refused BPF object {path}: {os.strerror(err)}\n{last_messages()}"
            )
        self._obj: int | None = obj

    def prog_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(errno.ENOENT, f"no program {name} in object")
        return _check(lib().bpf_program__fd(prog), f"fd of program {name}")

    def map_fd(self, name: str) -> int:
        return _check(
            lib().bpf_object__find_map_fd_by_name(self._obj, name.encode()), f"fd of map {name}"
        )

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


def map_update(
    fd: int, key: bytes, value: bytes, flags: int = BPF_ANY, what: str = "map update"
) -> None:
    _check(lib().bpf_map_update_elem(fd, key, value, flags), what)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ctypes.create_string_buffer(value_size)
    rc = lib().bpf_map_lookup_elem(fd, key, buf)
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        _check(rc, "map lookup")
    return buf.raw


def map_delete(fd: int, key: bytes, what: str = "map delete") -> bool:
    rc = lib().bpf_map_delete_elem(fd, key)
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        _check(rc, what)
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """All keys (a snapshot; hash and LPM maps)."""
    keys: list[bytes] = []
    cur: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = lib().bpf_map_get_next_key(fd, cur, nxt)
        if rc < 0:
            err = -rc if rc != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return keys
            _check(rc, "map get_next_key")
        cur = nxt.raw
        keys.append(cur)
        if len(keys) > 1_000_000:
            raise BpfError(errno.E2BIG, "map key walk did not end")


def map_freeze(fd: int) -> None:
    _check(lib().bpf_map_freeze(fd), "map freeze")


def map_id(fd: int) -> int:
    """The kernel's id of a map or program (what `bpftool map|prog ... id N` names)."""
    lb = lib()
    lb.bpf_obj_get_info_by_fd.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
    ]
    info = ctypes.create_string_buffer(256)  # bpf_map_info / bpf_prog_info: id at offset 4
    n = ctypes.c_uint32(len(info))
    _check(lb.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)), "map info")
    return int.from_bytes(info.raw[4:8], "little")
