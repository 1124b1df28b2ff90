"""Data sources at corpus scale: one spec (a file, a glob of shards, a ``save_to_disk`` folder or a hub dataset)
read lazily through Hugging Face ``datasets`` in streaming mode, with memory that does not grow with the corpus.

Why a library module next to :mod:`mergekd.data`: ``load_chunks`` reads a whole file into a list, which is
right for a few MB of text and wrong for a 50 GB corpus of parquet shards. Here every source is read in small
batches and chunked one document at a time; nothing holds the list of documents. JSON arrays, CSV, Arrow,
``save_to_disk`` folders and hub datasets are ``datasets`` ``IterableDataset`` objects (``streaming=True``, or
``Dataset.to_iterable_dataset()`` for memory-mapped Arrow); parquet is read page by page with pyarrow (datasets
decodes a whole row group at a time) and ``.jsonl`` line by line (so errors name the exact line). For a ``.txt`` or
``.jsonl`` file the chunks are exactly those of ``load_chunks`` (same documents, same :func:`chunk_text`, same
skipping of whitespace-only chunks), so a run can switch readers without changing a byte of its data.

Source kinds (:class:`DataSource` ``path``; spec strings ``PATH[?key=value&...]`` for the command line)::

    notes.txt                         one document (txt_mode=document; exact bytes, CRLF kept)
    notes.txt?txt_mode=line           one document per line (without its "\\n" or "\\r\\n")
    notes.txt?txt_mode=paragraph      one document per run of non-blank lines (blank: whitespace only)
    data.jsonl / data.json            JSON lines (or a JSON array), the document in text_field
    data.parquet / data.csv           a table, the document in column text_field
    data.arrow                        an Arrow IPC file or stream (what save_to_disk writes)
    saved/                            a Dataset.save_to_disk folder (a DatasetDict folder: pick split)
    data/*.parquet                    a glob of shards of one kind, read in sorted path order
    hub:owner/name?config=en&split=train   a hub dataset (must be in the local cache when offline)

Records may also be prompt/response pairs (``prompt_field``, optional ``response_field``) or chats
(``messages_field``), as in :mod:`mergekd.distill.prompts`; :func:`iter_records` gives them unchanged.

Deterministic order (what training relies on to resume):

- the stream is the documents in shard order (sorted paths for a glob; the hub's own order for a hub id), then
  row order inside a shard, then each document's chunks in order;
- ``shuffle_buffer=B > 0`` permutes that stream with a buffer of ``B`` chunks driven by
  ``random.Random(epoch_seed(seed, epoch))``, where ``epoch_seed(seed, epoch) = seed * 1_000_003 + epoch``: fill
  the buffer with the first ``B`` chunks; then for every further chunk draw ``j = randrange(B)``, emit slot ``j``
  and put the new chunk there; at the end shuffle the buffer with the same generator and emit it. The chunk at
  position ``n`` of epoch ``e`` is therefore a pure function of (data, seq_bytes, B, seed, e, n);
- an epoch is one pass over the stream; ``iter_chunks(..., start=n)`` is exactly the stream without its first
  ``n`` chunks (it re-reads and skips them: resuming costs reading, never a different order).
"""

from __future__ import annotations

import glob as globlib
import logging
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping
from urllib.parse import parse_qsl, quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, EmptyTextError, MergekdError, one_line
from .text import chunk_text

# datasets' readers log a failed file at ERROR level before raising; _shard_rows turns the exception into one
# line naming the file, so the log line would only be a second, noisier copy on stderr.
logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)

HUB_PREFIX = "hub:"
EPOCH_MULTIPLIER = 1_000_003
_GLOB_CHARS = "*?["
# Rows decoded per Arrow batch: big enough that per-row overhead is small, small enough that a batch of long
# documents stays a few MB.
_BATCH_ROWS = 256
# JSON is parsed in pieces of this many bytes (datasets' default is 10 MB; 1 MB keeps the first read small).
_JSON_CHUNK_BYTES = 1 << 20

_SUFFIX_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_FORMAT_NAMES = {"txt": "plain text", "json": "JSON lines", "parquet": "Parquet", "csv": "CSV",
                 "arrow": "Arrow", "disk": "a save_to_disk folder", "hub": "a hub dataset"}


class DataSource(BaseModel):
    """Where documents come from and which fields hold them. Build it with :func:`parse_source` from a spec
    string, or ``DataSource.model_validate(mapping)`` from a config file (errors: :func:`build_source`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="a .txt/.jsonl/.json/.parquet/.csv/.arrow file, a save_to_disk folder, a glob "
                                  "of shards (data/*.parquet) or hub:owner/name")
    text_field: str = Field("text", description="field (column) that holds a plain-text document")
    messages_field: str | None = Field(None, description="field that holds a chat: a list of {role, content}")
    prompt_field: str | None = Field(None, description="field that holds a prompt (prompt/response records)")
    response_field: str | None = Field(None, description="field that holds the response; default 'response' "
                                                         "when prompt_field is set")
    split: str = Field("train", description="split of a hub dataset or a DatasetDict folder")
    config: str | None = Field(None, description="configuration (subset) of a hub dataset")
    txt_mode: Literal["document", "line", "paragraph"] = Field(
        "document", description=".txt only: the whole file is one document, or one per line, or one per "
                                "paragraph (runs of non-blank lines)")
    shuffle_buffer: int = Field(0, ge=0, description="chunks held by the seeded shuffle buffer; 0 = stream order")

    @model_validator(mode="after")
    def _consistent(self) -> DataSource:
        if not self.path.strip():
            raise ValueError("path: empty; give a file, a folder, a glob of shards or hub:owner/name")
        if self.messages_field is not None and self.prompt_field is not None:
            raise ValueError("messages_field and prompt_field are both set; a record is a chat or a "
                             "prompt/response pair, not both")
        if self.response_field is not None and self.prompt_field is None:
            raise ValueError("response_field is set without prompt_field; set prompt_field too")
        hub = self.path.startswith(HUB_PREFIX)
        if hub and not self.path[len(HUB_PREFIX):].strip("/"):
            raise ValueError("path: hub: needs a dataset id, e.g. hub:owner/name")
        if self.config is not None and not hub:
            raise ValueError(f"config applies to hub datasets only (path {self.path!r} is local); remove it")
        if self.txt_mode != "document" and (hub or _suffix(self.path) in _SUFFIX_FORMATS):
            raise ValueError(f"txt_mode={self.txt_mode} applies to .txt files only; remove it for {self.path!r}")
        return self

    @property
    def kind(self) -> str:
        """``"text"`` (documents), ``"prompt"`` (prompt/response pairs) or ``"messages"`` (chats)."""
        if self.messages_field is not None:
            return "messages"
        return "prompt" if self.prompt_field is not None else "text"

    @property
    def hub_id(self) -> str | None:
        return self.path[len(HUB_PREFIX):].strip("/") if self.path.startswith(HUB_PREFIX) else None

    def fields(self) -> tuple[str, ...]:
        """The fields this source reads from every record (the response field is optional in a record)."""
        if self.kind == "messages":
            return (self.messages_field,)
        if self.kind == "prompt":
            return (self.prompt_field, self.response_field or "response")
        return (self.text_field,)

    def to_spec(self) -> str:
        """The spec string :func:`parse_source` reads back into this source (only non-default options)."""
        options = [f"{k}={quote(str(v), safe='/:')}" for k, v in self.model_dump(exclude_defaults=True).items()
                   if k != "path"]
        return self.path + ("?" + "&".join(options) if options else "")


SOURCE_OPTIONS = tuple(name for name in DataSource.model_fields if name != "path")


@dataclass(frozen=True)
class Record:
    """One record of a source: its 0-based position in the stream, where it is (for messages), and its fields."""

    index: int
    where: str  # "data/part-1.parquet: row 7" (rows count from 1 within a file), "notes.txt: line 3", ...
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list | None = None


# ----------------------------------------------------------------------------------------------- the spec string


def parse_source(spec: str, where: str = "--data") -> DataSource:
    """``PATH[?text_field=body&split=train&...]`` → :class:`DataSource` (options as in teacher specs).

    The options start at the last ``?`` whose tail is ``key=value`` pairs, so a glob's ``?`` wildcard still works
    (``data/part-?.parquet``). Unknown keys, pairs without ``=`` and repeated keys are refused by name."""
    spec = str(spec)
    path, query = spec, ""
    head, sep, tail = spec.rpartition("?")
    if sep and "/" not in tail and (not tail or any("=" in t or t in SOURCE_OPTIONS for t in tail.split("&"))):
        path, query = head, tail
    options: dict[str, str] = {}
    for raw in query.split("&") if query else ():
        if not raw:
            continue
        if "=" not in raw:
            raise ConfigError(f"{where}: option {raw!r} in {spec!r} has no value; write {raw}=VALUE "
                              f"(options: {', '.join(SOURCE_OPTIONS)})")
        (key, value), = parse_qsl(raw, keep_blank_values=True)
        if key not in SOURCE_OPTIONS:
            raise ConfigError(f"{where}: unknown option {key!r} in {spec!r}; valid options: "
                              f"{', '.join(SOURCE_OPTIONS)}")
        if key in options:
            raise ConfigError(f"{where}: option {key!r} is given twice in {spec!r}; keep one")
        options[key] = value
    return build_source({"path": path, **options}, f"{where} {spec!r}")


def build_source(fields: Mapping[str, Any], where: str = "data source") -> DataSource:
    """Validate a mapping (a config file's table, parsed spec options) into a :class:`DataSource`; every problem
    is one ConfigError line starting with ``where`` (say which file and entry the mapping came from)."""
    try:
        return DataSource.model_validate(dict(fields))
    except ValidationError as exc:
        raise one_line(exc, where) from None


def as_source(source: DataSource | str | Path) -> DataSource:
    """A :class:`DataSource` from itself, a spec string, or a path (a ``Path`` is never parsed for options)."""
    if isinstance(source, DataSource):
        return source
    if isinstance(source, Path):
        return build_source({"path": str(source)})
    return parse_source(source)


# ------------------------------------------------------------------------------------------- resolving a source


def _suffix(path: str) -> str:
    return Path(path.rstrip("/")).suffix.lower()


def _file_format(path: Path) -> str:
    return _SUFFIX_FORMATS.get(path.suffix.lower(), "txt")  # like mergekd.data: any other file is plain text


@dataclass(frozen=True)
class SourcePlan:
    """A resolved source: its format and its shards in stream order."""

    format: str  # txt, json, parquet, csv, arrow, disk, hub
    shards: tuple[str, ...]  # files (or one folder, or the hub id) in stream order
    label: str  # how errors name the whole source


def resolve(source: DataSource | str | Path) -> SourcePlan:
    """Check that a source exists and list its shards in stream order (eagerly: a missing file is an error
    before any training starts). A glob matching files of several kinds is refused."""
    source = as_source(source)
    if source.hub_id is not None:
        return _checked(SourcePlan("hub", (source.hub_id,), source.path), source)
    raw = source.path
    if any(c in raw for c in _GLOB_CHARS) and not Path(raw).expanduser().exists():  # a real "a[1].txt" is a file
        matches = sorted(p for p in globlib.glob(str(Path(raw).expanduser()), recursive=True) if Path(p).is_file())
        if not matches:
            raise ConfigError(f"data source {raw}: no file matches the pattern; check the folder and the pattern "
                              "(e.g. data/*.parquet)")
        formats = sorted({_file_format(Path(m)) for m in matches})
        if len(formats) > 1:
            raise ConfigError(f"data source {raw}: the pattern matches files of several kinds ({', '.join(formats)}); "
                              "narrow it to one suffix, e.g. data/*.parquet")
        return _checked(SourcePlan(formats[0], tuple(matches), raw), source)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
            raise ConfigError(f"data source {raw}: the folder is not a save_to_disk folder (no state.json or "
                              f"dataset_dict.json); for a folder of files use a glob, e.g. {raw.rstrip('/')}/*.parquet")
        return _checked(SourcePlan("disk", (str(path),), raw), source)
    if not path.is_file():
        raise ConfigError(f"data file {raw} does not exist; give an existing file, a save_to_disk folder, a glob "
                          "of shards or hub:owner/name")
    return _checked(SourcePlan(_file_format(path), (str(path),), raw), source)


def _checked(plan: SourcePlan, source: DataSource) -> SourcePlan:
    if source.split != "train" and plan.format not in ("hub", "disk"):
        raise ConfigError(f"data source {plan.label}: split={source.split} applies to hub datasets and DatasetDict "
                          "folders only (a file is one split); remove it")
    if source.txt_mode != "document" and plan.format != "txt":
        raise ConfigError(f"data source {plan.label}: txt_mode={source.txt_mode} applies to .txt files only")
    if plan.format == "txt" and source.kind != "text":
        raise ConfigError(f"data source {plan.label}: a plain-text file holds documents, not "
                          f"{'chats' if source.kind == 'messages' else 'prompt/response pairs'}; remove "
                          f"{_OPTION[source.kind]} or give a .jsonl/.parquet file")
    return plan


# ------------------------------------------------------------------------------------ reading rows via datasets


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _strip_eol(line: str) -> str:
    return line[:-1].removesuffix("\r") if line.endswith("\n") else line


_LINE = "_mergekd_line"


def _txt_rows(path: str, mode: str, field: str) -> Iterator[dict]:
    """Rows of a .txt file with its exact bytes (no newline translation, unlike datasets' text builder, which
    opens files in universal-newline mode). ``where`` names the line a record starts on."""
    if mode == "document":
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 (byte {exc.start}); convert it first, "
                              "e.g. iconv -t utf-8") from None
        yield {field: text, _LINE: 1}
        return
    para: list[str] = []
    first = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):  # binary iteration splits on b"\n" only
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not UTF-8 (byte {exc.start} of the line is 0x{raw[exc.start]:02x}); "
                                  "convert the file, e.g. iconv -t utf-8") from None
            if mode == "line":
                yield {field: _strip_eol(line), _LINE: n}
            elif line.strip():
                if not para:
                    first = n
                para.append(line)
            elif para:
                yield {field: _strip_eol("".join(para)), _LINE: first}
                para = []
    if para:
        yield {field: _strip_eol("".join(para)), _LINE: first}


def _check_fields(names: list[str] | None, source: DataSource, label: str) -> list[str] | None:
    """The fields to select from a shard whose column ``names`` are known (None: unknown, select nothing); a
    required field missing from the columns is one error listing them and the option that picks another."""
    if names is None:
        return None
    optional = (source.response_field or "response") if source.kind == "prompt" else None
    for name in source.fields():
        if name not in names and name != optional:
            raise ConfigError(f"{label}: no field {name!r} (fields: {', '.join(names) or 'none'}); choose the "
                              f"field with ?{_OPTION[source.kind]}=NAME")
    return [name for name in source.fields() if name in names]


_OPTION = {"text": "text_field", "prompt": "prompt_field", "messages": "messages_field"}


def _open_shard(fmt: str, shard: str, source: DataSource):
    """``(IterableDataset, column names or None)`` for one shard (a file, a save_to_disk folder, the hub id);
    parquet and .jsonl files are read by :func:`_shard_rows` itself."""
    import datasets

    if fmt == "txt":
        field = source.text_field
        ds = datasets.IterableDataset.from_generator(
            _txt_rows, gen_kwargs={"path": shard, "mode": source.txt_mode, "field": field},
            features=datasets.Features({field: datasets.Value("string"), _LINE: datasets.Value("int64")}))
        return ds, None
    if fmt == "json":
        ds = datasets.load_dataset("json", data_files=[shard], split="train", streaming=True,
                                   chunksize=_JSON_CHUNK_BYTES, on_mixed_types=None, parse_agent_traces=False)
        return ds, (list(ds.features) if ds.features is not None else None)
    if fmt == "csv":
        import csv

        with open(shard, newline="", encoding="utf-8-sig") as fh:
            names = next(csv.reader(fh), [])
        present = [f for f in source.fields() if f in names]
        features = datasets.Features({f: datasets.Value("string") for f in present}) if present else None
        # Only the needed columns, as strings, verbatim: no "NA"/"null"/"" → missing-value conversion, no numbers.
        ds = datasets.load_dataset("csv", data_files=[shard], split="train", streaming=True,
                                   features=features, na_filter=False, keep_default_na=False)
        return ds, names
    if fmt == "arrow":
        ds = datasets.load_dataset("arrow", data_files=[shard], split="train", streaming=True)
    elif fmt == "disk":
        saved = datasets.load_from_disk(shard)
        if isinstance(saved, datasets.DatasetDict):
            if source.split not in saved:
                raise ConfigError(f"data source {shard}: no split {source.split!r} (splits: "
                                  f"{', '.join(saved)}); choose one with ?split=NAME")
            saved = saved[source.split]
        elif source.split != "train":
            raise ConfigError(f"data source {shard}: a single-split save_to_disk folder has no split "
                              f"{source.split!r}; remove the split option")
        ds = saved.to_iterable_dataset()  # memory-mapped Arrow, read in order
    else:
        ds = _open_hub(shard, source)
    return ds, (list(ds.features) if ds.features is not None else None)


def _open_hub(hub_id: str, source: DataSource):
    import datasets

    label = f"{HUB_PREFIX}{hub_id}"
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    try:
        return datasets.load_dataset(hub_id, source.config, split=source.split, streaming=True)
    except (ConnectionError, OSError) as exc:
        first = exc
    except Exception as exc:  # noqa: BLE001 - a bad config/split name: datasets says which ones exist
        raise ConfigError(f"{label}: cannot open it ({_one_line(exc)})") from None
    # Streaming needs the hub; a dataset prepared earlier lives in the local cache as memory-mapped Arrow files.
    try:
        return datasets.load_dataset(hub_id, source.config, split=source.split).to_iterable_dataset()
    except Exception:  # noqa: BLE001 - report the first failure, which says why the hub was not reached
        pass
    why = "HF_HUB_OFFLINE=1" if offline else _one_line(first)
    raise ConfigError(f"{label}: dataset {hub_id!r} is not in the local Hugging Face cache and the hub cannot be "
                      f"reached ({why}); the dataset must be in the local cache or the hub reachable") from None


def _shard_rows(fmt: str, shard: str, source: DataSource, label: str,
                opened=None) -> Iterator[tuple[str, dict, list]]:
    """``(where, row, column names)`` for each row of one shard (``opened``: its dataset, if opened already);
    reading errors become one ConfigError naming the shard."""
    try:
        if fmt == "json" and _suffix(shard) == ".jsonl":  # read line by line: errors name the exact line
            from .data import jsonl_records

            names: list[str] | None = None
            for n, record in jsonl_records(Path(shard)):
                if names is None:
                    names = list(record)
                    _check_fields(names, source, label)
                yield f"{label}:{n}", record, names
            return
        if fmt == "parquet" and opened is None:
            # Page by page with pyarrow (what datasets uses underneath): datasets' parquet reader decodes a whole
            # row group per batch, and a file written by one pq.write_table call is one row group (2.8 GB peak RSS
            # for the first 100 KB of a 1 GB file, against 354 MB here); it also fails on an empty file.
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(shard, buffer_size=1 << 20, pre_buffer=False)
            names = pf.schema_arrow.names
            selected = _check_fields(names, source, label)
            n = 0
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=selected or None):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{label}: row {n}", row, names
            return
        ds, names = opened or _open_shard(fmt, shard, source)
        selected = _check_fields(names, source, label)
        if selected and fmt not in ("txt", "csv"):  # csv reads only these columns already
            ds = ds.select_columns(selected)
        n = 0
        for batch in ds.iter(batch_size=_BATCH_ROWS):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                n += 1
                row = dict(zip(columns, values))
                if fmt == "txt":
                    unit = "line" if source.txt_mode != "paragraph" else "paragraph at line"
                    yield f"{label}: {unit} {row.pop(_LINE)}", row, [source.text_field]
                else:
                    yield f"{label}: row {n}", row, names or columns
    except MergekdError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas/datasets errors: one line naming the file
        raise ConfigError(f"{label}: cannot read it as {_FORMAT_NAMES[fmt]} ({_one_line(exc)}); check the file "
                          "or its suffix") from None


def _string(row: dict, name: str, where: str, option: str, names: list, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None:
        if not required:
            return None
        raise ConfigError(f"{where}: missing field {name!r} (null or absent; the file's fields: "
                          f"{', '.join(names) or 'none'}); fill it, or choose the field with ?{option}=NAME")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field {name!r} must be a string, not {type(value).__name__}")
    return value


def iter_records(source: DataSource | str | Path, *, need_response: bool = True) -> Iterator[Record]:
    """Every record of the source in stream order (see the module docstring), lazily.

    The source is resolved now (a missing file or an unreachable hub dataset fails here); rows are read as the
    generator is consumed. A row without its field is a ConfigError naming the file, the row and the field."""
    source = as_source(source)
    plan = resolve(source)
    if source.kind == "text":
        def record(index: int, where: str, row: dict, names: list) -> Record:
            return Record(index, where, text=_string(row, source.text_field, where, "text_field", names))
    elif source.kind == "prompt":
        response_field = source.response_field or "response"

        def record(index: int, where: str, row: dict, names: list) -> Record:
            prompt = _string(row, source.prompt_field, where, "prompt_field", names)
            response = _string(row, response_field, where, "response_field", names, required=need_response)
            return Record(index, where, prompt=prompt, response=response)
    else:
        def record(index: int, where: str, row: dict, names: list) -> Record:
            messages = row.get(source.messages_field)
            if not isinstance(messages, list) or not messages:
                raise ConfigError(f"{where}: field {source.messages_field!r} must be a non-empty list of "
                                  '{"role": str, "content": str}' + ("" if messages is not None else " (missing)"))
            return Record(index, where, messages=messages)

    # A hub dataset is opened now: an id missing from the cache while offline fails before training starts.
    opened = _open_shard("hub", plan.shards[0], source) if plan.format == "hub" else None

    def records() -> Iterator[Record]:
        index = 0
        for shard in plan.shards:
            label = plan.label if plan.format in ("hub", "disk") or len(plan.shards) == 1 else shard
            for where, row, names in _shard_rows(plan.format, shard, source, label, opened):
                yield record(index, where, row, names)
                index += 1

    return records()


Render = Callable[[list, str], "tuple[str, str]"]


def iter_documents(source: DataSource | str | Path, *, render: Render | None = None) -> Iterator[tuple[int, str]]:
    """``(record index, text)`` for every non-empty document, lazily, in stream order.

    A text record's document is its text, exact (no stripping, no newline changes); a prompt/response record's
    is ``prompt + response`` (joined verbatim, as training sees it); a chat is ``prompt + response`` as rendered
    by ``render(messages, where)`` (e.g. ``lambda m, w: render_chat(m, tokenizer, w)`` with the student's
    tokenizer; a chat source without ``render`` is refused)."""
    source = as_source(source)
    if source.kind == "messages" and render is None:
        raise ConfigError(f"data source {source.path}: chats ({source.messages_field}) are rendered with the "
                          "student's chat template; pass render=, or read them with iter_records")
    records = iter_records(source, need_response=False)

    def documents() -> Iterator[tuple[int, str]]:
        for rec in records:
            if rec.text is not None:
                text = rec.text
            elif rec.messages is not None:
                prompt, response = render(rec.messages, rec.where)
                text = prompt + response
            else:
                text = rec.prompt + (rec.response or "")
            if text:
                yield rec.index, text

    return documents()


# ------------------------------------------------------------------------------------- chunks, shuffle, resume


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: ``seed * 1_000_003 + epoch`` (distinct epochs, distinct runs)."""
    return int(seed) * EPOCH_MULTIPLIER + int(epoch)


def shuffle_buffered(items: Iterable, buffer: int, seed: int) -> Iterator:
    """``items`` permuted by a seeded buffer of ``buffer`` slots (0 or 1: unchanged); a pure function of the
    input order and ``seed``. Holds at most ``buffer`` items; an item moves at most ~``buffer`` places early."""
    if buffer <= 1:
        yield from items
        return
    rng = random.Random(seed)
    slots: list = []
    for item in items:
        if len(slots) < buffer:
            slots.append(item)
            continue
        j = rng.randrange(buffer)
        yield slots[j]
        slots[j] = item
    rng.shuffle(slots)
    yield from slots


def iter_chunks(source: DataSource | str | Path, seq_bytes: int, *, seed: int = 0, epoch: int = 0,
                start: int = 0, render: Render | None = None) -> Iterator[str]:
    """Training chunks of at most ``seq_bytes`` bytes, lazily: each document cut by :func:`chunk_text`,
    whitespace-only chunks skipped (as :func:`mergekd.data.load_chunks`), permuted by the source's
    ``shuffle_buffer`` with ``epoch_seed(seed, epoch)``, without the first ``start`` chunks.

    ``iter_chunks(s, b, start=n)`` equals ``islice(iter_chunks(s, b), n, None)`` for every ``n``. A source
    without any chunk is an EmptyTextError once the pass ends."""
    return (chunk for _, chunk in iter_indexed_chunks(source, seq_bytes, seed=seed, epoch=epoch, start=start,
                                                       render=render))


def iter_indexed_chunks(source: DataSource | str | Path, seq_bytes: int, *, seed: int = 0, epoch: int = 0,
                        start: int = 0, render: Render | None = None,
                        shuffle: bool = True) -> Iterator[tuple[int, str]]:
    """``(n, chunk)`` pairs of :func:`iter_chunks`, where ``n`` is the chunk's position in the *unshuffled*
    stream (what a byte cache, captured in stream order, is looked up by). ``shuffle=False`` ignores the
    source's ``shuffle_buffer`` (stream order, e.g. for capturing a cache)."""
    source = as_source(source)
    if seq_bytes < 4:
        raise ConfigError(f"seq_bytes={seq_bytes}: chunk size must be at least 4 bytes (one UTF-8 character)")
    if start < 0:
        raise ConfigError(f"start={start}: the number of chunks to skip cannot be negative")
    documents = iter_documents(source, render=render)

    def chunks() -> Iterator[tuple[int, str]]:
        count = 0
        for _, doc in documents:
            for piece in chunk_text(doc, seq_bytes):
                if piece.strip():
                    yield count, piece
                    count += 1
        if count == 0:
            raise EmptyTextError(f"data source {source.path} holds no text")

    buffer = source.shuffle_buffer if shuffle else 0
    stream = shuffle_buffered(chunks(), buffer, epoch_seed(seed, epoch))
    return islice(stream, start, None)
