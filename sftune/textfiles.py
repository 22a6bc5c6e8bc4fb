"""Data files must be UTF-8: find the first byte that is not, before a parser fails on it with its own error."""

from __future__ import annotations

from pathlib import Path

from sftune.errors import UsageError

CHUNK = 1 << 20


def check_utf8(path: Path, what: str = "data file") -> None:
    """Raise a one-line UsageError naming the file, the first undecodable byte's offset and line."""
    base, carry, newlines = 0, b"", 0  # base: file offset of carry's first byte
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            data = carry + chunk
            final = not chunk
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as e:
                # A character cut by the chunk boundary is fine: keep its bytes for the next round.
                if not final and e.reason == "unexpected end of data" and len(data) - e.start < 4:
                    carry = data[e.start:]
                else:
                    offset = base + e.start
                    line = newlines + data[:e.start].count(b"\n") + 1
                    raise UsageError(f"{what} {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset "
                                     f"{offset} (line {line}) cannot be decoded as UTF-8. Save the file as UTF-8, "
                                     f"e.g. iconv -f latin1 -t utf-8 {path} > fixed.tsv.") from None
            if final:
                return
            done = data[:len(data) - len(carry)]
            newlines += done.count(b"\n")
            base += len(done)
