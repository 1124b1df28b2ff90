"""The training stream of ``mergekd distill``: examples read lazily from a data source, in a seeded order, with a
data position that a checkpoint records and a resumed run seeks to.

Why a stream and not a list: a corpus of gigabytes does not fit in a Python list of chunks, and nothing in a step
needs more than its batch. Memory holds the shuffle buffer (default 10,000 chunks, ~5 MB at 512-byte chunks) and
one batch, whatever the corpus size.

The order rule (documented in docs/data.md; :mod:`mergekd.sources` defines the stream and the buffer):

- epoch ``e`` is one pass over the source: chunks (or prompt/response records) in stream order, permuted by a
  shuffle buffer seeded with ``epoch_seed(seed, e)``; the buffer is the source's ``?shuffle_buffer=N`` when the
  spec sets it, else :data:`DEFAULT_SHUFFLE_BUFFER` (a buffer at least as large as the data is a full
  permutation per epoch; ``?shuffle_buffer=0`` keeps stream order);
- step ``s`` takes the next ``batch_size`` examples; an epoch that ends inside a batch continues with the next
  epoch's first examples. So the examples of step ``s`` are a pure function of (data, seed, batch_size, s);
- the position after a step is ``(epoch, offset)``; checkpoints store it, and a resumed run re-opens epoch
  ``epoch`` and skips ``offset`` examples (re-reading, never re-ordering). Every process reads the same stream
  and keeps its own share of each global batch.

Each example carries its index in the *unshuffled* stream: a byte cache, captured in stream order, is looked up
by it (and a cached run trains on the cache's chunks only: ``limit`` = the cache's chunk count).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, EmptyTextError
from ..sources import (DataSource, as_source, epoch_seed, iter_indexed_chunks, iter_records, parse_source,
                       shuffle_buffered)
from ..text import utf8_prefix, utf8_suffix
from .prompts import Example, cut_example, render_chat_turn

DEFAULT_SHUFFLE_BUFFER = 10_000
# Bytes of the stream read and checked before a run writes anything (~1 s at streaming speed).
CHECK_BYTES = 64 << 20


@dataclass(frozen=True)
class DataPosition:
    """Where the stream stands: ``offset`` examples of epoch ``epoch`` have been consumed."""

    epoch: int = 0
    offset: int = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_json(cls, raw: dict | None) -> "DataPosition | None":
        return None if raw is None else cls(int(raw["epoch"]), int(raw["offset"]))


def training_source(spec: DataSource | str | Path) -> DataSource:
    """The source a run trains on: its spec, with the default shuffle buffer unless the spec sets one, and the
    fields of a ``.jsonl`` file whose first line is a prompt/response pair or a chat (as before sources existed:
    ``--data pairs.jsonl`` needs no options)."""
    source = parse_source(spec) if isinstance(spec, str) else as_source(spec)
    updates: dict = {}
    if "shuffle_buffer" not in source.model_fields_set:
        updates["shuffle_buffer"] = DEFAULT_SHUFFLE_BUFFER
    if source.kind == "text" and "text_field" not in source.model_fields_set and \
            source.path.lower().endswith(".jsonl") and Path(source.path).is_file():
        first = _first_record(Path(source.path))
        if first is not None and "text" not in first:
            if "messages" in first:
                updates["messages_field"] = "messages"
            elif "prompt" in first:
                updates["prompt_field"] = "prompt"
            else:
                raise ConfigError(f"{source.path}:1: each line needs a field 'text' (plain text), 'prompt' (with "
                                  f"'response') or 'messages' (a chat); this line has {sorted(first) or 'no fields'}")
    if not updates:
        return source
    fields = {**source.model_dump(exclude_unset=True), **updates}
    return DataSource.model_validate(fields)


def _first_record(path: Path) -> dict | None:
    from ..data import jsonl_records

    for _, record in jsonl_records(path):
        return record
    return None


class ExampleStream:
    """``take(n)`` → the next ``n`` (index, :class:`Example`) pairs of the training stream (see the module
    docstring for the order); ``position`` / ``seek`` for checkpoints.

    ``limit``: train on the first ``limit`` examples of the unshuffled stream only (a byte cache's chunks)."""

    def __init__(self, source: DataSource | str | Path, *, seq_bytes: int, prompt_bytes: int, seed: int,
                 tokenizer=None, need_response: bool = True, limit: int | None = None):
        self.source = training_source(source)
        self.seq_bytes, self.prompt_bytes, self.seed = seq_bytes, prompt_bytes, seed
        self.tokenizer, self.need_response, self.limit = tokenizer, need_response, limit
        self.kind = "text" if self.source.kind == "text" else "prompt"
        self._epoch, self._offset = 0, 0
        self._iter: Iterator | None = None

    @property
    def position(self) -> DataPosition:
        return DataPosition(self._epoch, self._offset)

    def seek(self, position: DataPosition) -> None:
        self._epoch, self._offset = position.epoch, position.offset
        self._iter = None

    def skip(self, n: int) -> None:
        """Advance by ``n`` examples (a resume from a checkpoint that predates recorded positions)."""
        while n > 0:
            n -= len(self.take(min(n, 4096)))

    def take(self, n: int) -> list[tuple[int, Example]]:
        out: list[tuple[int, Example]] = []
        while len(out) < n:
            if self._iter is None:
                self._iter = self._open(self._epoch, self._offset)
            got = list(islice(self._iter, n - len(out)))
            out += got
            self._offset += len(got)
            if len(out) < n:  # the epoch ended
                if self._offset == 0:
                    raise EmptyTextError(f"data source {self.source.path} holds no examples")
                self._epoch, self._offset, self._iter = self._epoch + 1, 0, None
        return out

    def check(self, max_bytes: int = CHECK_BYTES) -> int:
        """Read the first ``max_bytes`` of the stream (all of a smaller source) and build their examples, so bad
        input there (a missing file or field, malformed JSON, non-UTF-8 bytes, an empty reply) stops the run
        before anything is written. Returns the bytes checked. Past that prefix a bad record stops the run when
        it is reached (checkpoints before it stay)."""
        seen = 0
        for _, example in self._examples(self._unshuffled()):
            seen += len(example.text.encode("utf-8"))
            if seen >= max_bytes:
                break
        if seen == 0:
            raise EmptyTextError(f"data source {self.source.path} holds no examples")
        return seen

    def first(self, n: int) -> list[tuple[int, Example]]:
        """The first ``n`` examples of the unshuffled stream (fitting a mixer; a cache's first chunks)."""
        return list(islice(self._examples(self._unshuffled()), n))

    # ----------------------------------------------------------------------------------------------------------
    def _unshuffled(self) -> Iterator[tuple[int, object]]:
        if self.kind == "text":
            items = iter_indexed_chunks(self.source, self.seq_bytes, shuffle=False)
        else:
            items = ((r.index, r) for r in iter_records(self.source, need_response=self.need_response))
        return items if self.limit is None else islice(items, self.limit)

    def _open(self, epoch: int, start: int) -> Iterator[tuple[int, Example]]:
        shuffled = shuffle_buffered(self._unshuffled(), self.source.shuffle_buffer, epoch_seed(self.seed, epoch))
        return islice(self._examples(shuffled), start, None)

    def _examples(self, items) -> Iterator[tuple[int, Example]]:
        for index, item in items:
            if self.kind == "text":
                yield index, Example(item, utf8_prefix(item.encode("utf-8"), self.prompt_bytes).decode("utf-8"), 0)
            else:
                yield index, self._pair(item)

    def _pair(self, record) -> Example:
        """A prompt/response record or a chat → an Example cut to ``seq_bytes`` (as ``read_data`` does)."""
        where = record.where
        if record.messages is not None:  # a chat keeps its teachers' view (Example.chat), cut with the text
            chat = render_chat_turn(record.messages, self.tokenizer, where, self.need_response)
            return cut_example(chat.prompt, chat.response, prompt_bytes=self.prompt_bytes, seq_bytes=self.seq_bytes,
                               chat=chat)
        else:
            prompt, response = record.prompt, record.response
            if not prompt:
                raise ConfigError(f"{where}: field 'prompt' is empty; an on-policy sample needs something to "
                                  "continue")
            if self.need_response and not response:
                raise ConfigError(f"{where}: field 'response' is empty: there is nothing to learn from this record")
        p = utf8_suffix(prompt.encode("utf-8"), self.prompt_bytes)
        r = utf8_prefix(response.encode("utf-8"), self.seq_bytes - len(p)) if response else b""
        return Example((p + r).decode("utf-8"), p.decode("utf-8"), len(p))
