"""Opening dataset files safely: regular files only, and text as UTF-8 with or without a byte-order mark.

Only regular files are read. A named pipe (FIFO) called ``x.jpg`` in ``JPEGImages/`` would make a plain ``open``
wait forever for a writer, and a device such as ``/dev/zero`` would never end; a folder cannot be read either. The
file is opened non-blocking and checked with ``fstat`` on the open descriptor, so nothing can swap it between the
check and the read, and opening a FIFO returns at once.

Text files (split lists, COCO JSON, XML without an encoding declaration) are UTF-8; a UTF-8 byte-order mark, as
Windows Notepad writes it, is accepted and dropped. Anything else fails with the byte, line and column that are not
UTF-8.

The errors raised here do not repeat the path: every caller prefixes the file it was reading.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["decode_utf8", "file_kind", "open_regular", "read_bytes", "read_text", "xml_encoding_hint"]

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (``"a named pipe (FIFO)"``), from its ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def open_regular(path: str | Path) -> BinaryIO:
    """Open a file for binary reading if it is a regular file (symbolic links to one are followed).

    Raises:
        OSError: the file cannot be opened (missing, no permission), or it is not a regular file; then the message
            says ``"not a regular file: a named pipe (FIFO)"`` or the like.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)  # non-blocking: opening a FIFO without a writer returns at once
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file: {file_kind(mode)}")
        return open(fd, "rb", closefd=True)  # (O_NONBLOCK has no effect on the reads of a regular file)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path) -> bytes:
    """The content of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as f:
        return f.read()


def decode_utf8(data: bytes) -> str:
    """Decode UTF-8 text; a leading byte-order mark is dropped.

    Raises:
        ValueError: the bytes are not UTF-8; the message gives the first bad byte with its line and column, and
            names UTF-16 when the data starts with a UTF-16 byte-order mark (Notepad's "Unicode").
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        hint = ""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = " (it starts with a UTF-16 byte-order mark: the file is UTF-16)"
        raise ValueError(
            f"not UTF-8 text{hint}: byte 0x{data[start]:02x} at line {line}, column {column} ({exc.reason}); "
            "save the file as UTF-8"
        ) from None


def read_text(path: str | Path) -> str:
    """The content of a regular UTF-8 text file (a byte-order mark is accepted).

    Raises:
        OSError: the file cannot be read or is not a regular file.
        ValueError: the content is not UTF-8 (see :func:`decode_utf8`).
    """
    return decode_utf8(read_bytes(path))


_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=", re.IGNORECASE)


def xml_encoding_hint(data: bytes) -> str:
    """For the error of an XML file that failed to parse: ``" (it declares no encoding, so it must be UTF-8, but it
    is not UTF-8 text: byte 0xe9 at line 3, ...)"``, or ``""`` when it declares an encoding or is UTF-8."""
    if _XML_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf")):
        return ""
    try:
        decode_utf8(data)
    except ValueError as exc:
        return f" (it declares no encoding, so it must be UTF-8, but it is {exc})"
    return ""
