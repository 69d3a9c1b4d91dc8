"""Token bytes to printable text: whole UTF-8 characters only, stop strings cut out."""

from __future__ import annotations

import codecs
from typing import Callable, Sequence

from edgespec.errors import UsageError


def decode_input(data: bytes, source: str) -> str:
    """UTF-8 text from the user's bytes, or one line that names the first bad byte and where it is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{source} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}",
            "convert it to UTF-8 first, e.g. with iconv -f latin1 -t utf-8",
        ) from None


def check_input(text: str, source: str) -> str:
    """Text that came in through the OS (an argument, a line read in a non-UTF-8 mode) may hold
    undecodable bytes as lone surrogates; refuse it the same way as bad bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return decode_input(text.encode("utf-8", "surrogateescape"), source)
        except UnicodeEncodeError:
            raise UsageError(f"{source} holds text that is not valid Unicode (a lone surrogate)") from None


class TextStream:
    """Feed token ids, get back the text that is safe to show now.

    A character split across tokens is held until it is complete. Text that could be the start
    of a stop string is held until it is known not to be one; when a stop string appears,
    `stopped` becomes True and the text before it is the last thing returned.
    """

    def __init__(self, piece: Callable[[int], bytes], stop: Sequence[str] = ()):
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False
        self.text = ""  # everything returned so far

    def push(self, tokens: Sequence[int]) -> str:
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"".join(self._piece(t) for t in tokens))
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return self._emit(text[:cut])
        keep = self._partial_stop(text)
        self._held = text[len(text) - keep :] if keep else ""
        return self._emit(text[: len(text) - keep])

    def flush(self) -> str:
        """The rest, at the end of generation (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return self._emit(text)

    def _partial_stop(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, s: str) -> str:
        self.text += s
        return s
