"""One libnftables handle (ctypes over libnftables.so.1): run nft scripts as single atomic transactions.

Spawning ``nft`` per update costs a fork+exec and a full cache fetch each time; one long-lived context keeps the
per-answer cost to parsing a short script and one netlink batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    """nftables rejected a change (libnftables script or netlink batch); the message says why."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise NftError(f"cannot load libnftables ({name}): {exc}; install Debian package libnftables1") from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


class Nft:
    """A libnftables context. ``run`` is thread-safe (one lock): the context's buffers are not."""

    def __init__(self) -> None:
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._lock = threading.Lock()

    def run(self, script: str) -> str:
        """Run ``script`` (one transaction: all commands apply or none). Returns the output (JSON text)."""
        with self._lock:
            if self._ctx is None:
                raise NftError("nftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed (rc={rc})")
        return out.decode(errors="replace")

    def query(self, command: str) -> list[dict[str, Any]]:
        """Run a list command and return the JSON ``nftables`` array (without the metainfo entry)."""
        text = self.run(command)
        if not text.strip():
            return []
        items: list[dict[str, Any]] = json.loads(text).get("nftables", [])
        return [item for item in items if "metainfo" not in item]

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None
