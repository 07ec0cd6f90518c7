"""msgpack options in one place: nothing else in taskmill imports msgpack.

Maps decode with ``str`` keys and values (``raw=False``); ``bytes`` stay ``bytes``;
tuples encode as arrays. ``strict_map_key=False`` is *not* set: map keys must be
``str`` or ``bytes``, which rejects exotic keys before they reach validation.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import DecodeError

# A single Packer reused for speed; Packer is not thread safe, so each thread that
# encodes gets its own through pack() below (daemons encode from one thread).
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def pack(obj: Any) -> bytes:
    """Encode ``obj`` to msgpack bytes. Raises TypeError for unsupported values."""
    data: bytes = _packer.pack(obj)
    return data


def unpack(data: bytes) -> Any:
    """Decode one msgpack document; any failure becomes :class:`DecodeError`."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        ValueError,
        TypeError,
        UnicodeDecodeError,
    ) as exc:
        detail = str(exc) or type(exc).__name__
        raise DecodeError(f"frame body is not valid msgpack ({detail})") from exc


def is_packable(obj: Any) -> bool:
    """True when ``obj`` survives an encode (used to check call arguments early)."""
    try:
        msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
