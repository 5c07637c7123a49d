"""Set a loaded module's enabled features in one step.

libyang's `lys_set_implemented()` replaces the whole feature set on each call, so enabling
features one by one (as `Module.feature_enable` does) keeps only the last one and fails for
features whose if-feature names an earlier one (ietf-netconf's confirmed-commit needs
candidate). This passes the complete list at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from libyang.util import str2c


def set_features(ctx: libyang.Context, module: str, features: Iterable[str]) -> None:
    mod = ctx.get_module(module)
    names = [str2c(f) for f in features]
    arr = ffi.new("char *[]", [*names, ffi.NULL])
    if lib.lys_set_implemented(mod.cdata, arr) != lib.LY_SUCCESS:
        raise ctx.error(f"cannot enable features {list(features)} of {module}")
