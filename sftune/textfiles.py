"""Data files must be UTF-8: find the first byte that is not, before a parser fails on it with its own error."""

from __future__ import annotations

import codecs
from pathlib import Path

from sftune.errors import UsageError

CHUNK = 1 << 20


def check_utf8(path: Path, what: str = "data file") -> None:
    """Raise a one-line UsageError naming the file, the first undecodable byte's offset and line. Read in chunks
    through the incremental decoder, which keeps a character cut by a chunk boundary for the next chunk."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed, newlines = 0, 0  # bytes and newlines in the chunks before this one
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            pending = decoder.getstate()[0]  # the start of a cut character: never a newline
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:  # e.object is pending + chunk
                offset = consumed - len(pending) + e.start
                line = newlines + e.object[:e.start].count(b"\n") + 1
                raise UsageError(f"{what} {path} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                                 f"{offset} (line {line}) cannot be decoded as UTF-8. Save the file as UTF-8, "
                                 f"e.g. iconv -f latin1 -t utf-8 {path} > fixed.tsv.") from None
            if not chunk:
                return
            consumed += len(chunk)
            newlines += chunk.count(b"\n")
