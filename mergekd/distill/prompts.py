"""Training examples for ``mergekd distill``: plain text chunks, or prompt/response pairs whose prompt is not trained.

Why one ``Example`` type for both: the loop needs three things of every example, whatever the file held —
the text an off-policy batch trains on, the prompt an on-policy batch samples from, and the byte offset where the
loss starts. Plain text is ``Example(text=chunk, prompt=first prompt_bytes bytes of chunk, loss_from=0)``: every
byte of a chunk is data to learn. A prompt/response pair is ``Example(text=prompt+response, prompt=prompt,
loss_from=len(prompt bytes))``: the prompt is given at inference time, so learning to predict it would spend
capacity on the user's side of the conversation (and on templates); only response bytes enter the loss.

File formats (``.jsonl``, one JSON object per line; the first non-empty line decides the format):

- ``{"text": ...}`` — plain text documents (same as :func:`mergekd.data.read_documents`), cut into chunks;
- ``{"prompt": ..., "response": ...}`` — prompt/response pairs, used verbatim (no separator is inserted: put
  the one you want at the end of the prompt or the start of the response);
- ``{"messages": [{"role": ..., "content": ...}, ...]}`` — a chat whose last message is the assistant's reply,
  rendered with the *student's* chat template (the student is the model that will be prompted this way).

``response`` may be left out only when every batch is on-policy (``on_policy == 1``), since then the student
writes the responses. Any other file (``.txt``, ...) is plain text. Errors name the file, the line and the field.

Chats and teachers (:class:`ChatTurn`). An instruct teacher has learned its *own* template, so scoring the
student's rendering would ask it about markup it never saw. A chat example therefore also keeps the messages
before the reply (``context``) and where the reply's bytes lie in the student's text ([start, end)). Each teacher
then conditions on the context rendered by its own template with its generation prompt and scores the reply:

- the reply is the assistant's content *as the student's template rendered it* (a template may ``trim`` it, or
  put markup such as an empty think block before it); it is located by rendering the chat once more with a
  sentinel in place of the content, and a rendering that does not show (a piece of) the content there is refused
  with ``FILE:LINE``. Bytes the student's template writes around the reply (``<|im_end|>\\n``, think markup) have
  no teacher row: only the student's own CE terms train them;
- a teacher whose tokenizer has a chat template reads ``apply_chat_template(context, add_generation_prompt=True)``
  token ids — exactly those ids, special tokens as control tokens (also special-token strings inside the context
  messages, as the template's own tokenisation reads them) — then the reply's canonical tokenisation on its own
  (no BOS; special-token strings as plain text, as everywhere in mergekd). The reply bytes are the same bytes as
  in the student's text, so every teacher's rows line up with the student's byte for byte;
- a teacher without a chat template reads the *plain rendering* (:func:`plain_chat_prompt`): one line
  ``Role: content`` per message (the role with its first letter capitalised), then ``Assistant: ``, and the reply
  right after it, all as one text scored like any other (BOS where the tokenizer adds one);
- on-policy samples are views of the same kind: the student's continuation of its prompt plays the reply.

What is approximate: the teacher reads the reply tokenised on its own, where its template would tokenise
``generation prompt + reply`` as one string (the same ids whenever the generation prompt ends at a token boundary
such as ChatML's and Gemma's ``\\n``; a SentencePiece tokenizer with a dummy prefix puts its space before the
reply's first token, as before any text); a template that writes markup between its generation prompt and the
content (Llama-2's leading space) does not get that markup; teachers see the whole context even where the
student's prompt was cut to ``prompt_bytes`` (a context longer than a teacher window slides like a long text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import jsonl_records, load_chunks
from ..text import utf8_prefix, utf8_suffix
from ..errors import ConfigError, EmptyTextError

# stands in for the reply's content when the student's template is rendered to find where the content goes
_SENTINEL = "MergekdReplySentinel7f3a9c"


@dataclass(frozen=True)
class ChatTurn:
    """A chat's teacher view: the messages before the reply, and the reply's bytes at [start, end) of a text.

    Teachers render ``context`` with their own templates and score ``reply``; their rows land at the text's
    [start, end), and every other row of the text has no teacher row (see the module docstring)."""

    context: tuple[dict, ...] = field(hash=False)  # the messages before the reply, as in the data
    reply: str  # the reply as the student's template rendered it (cut with the example); "" when cut away
    start: int  # UTF-8 byte offset of the reply in the student's text
    where: str = ""  # FILE:LINE of the chat, for errors

    @property
    def end(self) -> int:
        return self.start + len(self.reply.encode("utf-8"))


@dataclass(frozen=True)
class Example:
    text: str  # what an off-policy batch trains on (prompt + response, or a plain-text chunk)
    prompt: str  # what an on-policy batch conditions the student's sample on
    loss_from: int  # UTF-8 byte offset in ``text`` where the loss starts (0 for plain text)
    chat: ChatTurn | None = None  # chats only: what teachers render with their own templates


@dataclass(frozen=True)
class RenderedChat:
    """A chat rendered with the student's template: ``prompt`` + ``response`` is the student's text; the reply
    (the assistant's content as rendered) starts ``reply_at`` bytes into ``response``."""

    prompt: str
    response: str
    context: tuple[dict, ...]
    reply: str
    reply_at: int
    where: str


@dataclass(frozen=True)
class TrainingData:
    examples: list[Example]
    kind: str  # "text" or "prompt"

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]


def read_data(path: Path | str, *, seq_bytes: int, prompt_bytes: int, tokenizer=None,
              need_response: bool = True) -> TrainingData:
    """Read ``path`` into :class:`TrainingData` (see the module docstring for the formats).

    Prompt/response pairs are cut to fit ``seq_bytes``: a prompt keeps its *last* ``prompt_bytes`` bytes (the
    part next to the response), then the response is cut to the bytes left, never inside a character.
    ``tokenizer`` (the student's) is needed only for ``messages`` lines.
    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "text":
        chunks = load_chunks(path, seq_bytes)
        if not chunks:
            raise EmptyTextError(f"data file {path} holds no text")
        return TrainingData([Example(c, utf8_prefix(c.encode("utf-8"), prompt_bytes).decode("utf-8"), 0)
                             for c in chunks], "text")
    examples = []
    for n, record in jsonl_records(path):
        if "messages" in record:
            chat = render_chat_turn(record["messages"], tokenizer, f"{path}:{n}", need_response)
            examples.append(cut_example(chat.prompt, chat.response, prompt_bytes=prompt_bytes, seq_bytes=seq_bytes,
                                        chat=chat))
            continue
        prompt, response = _prompt_response(record, path, n, tokenizer, need_response)
        examples.append(cut_example(prompt, response, prompt_bytes=prompt_bytes, seq_bytes=seq_bytes))
    if not examples:
        raise EmptyTextError(f"data file {path} holds no examples")
    return TrainingData(examples, "prompt")


def cut_example(prompt: str, response: str, *, prompt_bytes: int, seq_bytes: int,
                chat: RenderedChat | None = None) -> Example:
    """A prompt/response pair (or a rendered chat) as an :class:`Example` cut to ``seq_bytes``: the prompt keeps its
    last ``prompt_bytes`` bytes, the response the room left, never inside a character. A chat's reply is cut with
    the response; its :class:`ChatTurn` keeps the whole context (teachers render it themselves)."""
    p = utf8_suffix(prompt.encode("utf-8"), prompt_bytes)
    r = utf8_prefix(response.encode("utf-8"), seq_bytes - len(p)) if response else b""
    turn = None
    if chat is not None:
        at = min(chat.reply_at, len(r))
        reply = r[at:at + len(chat.reply.encode("utf-8"))]  # reply and cut both end on character boundaries
        turn = ChatTurn(chat.context, reply.decode("utf-8"), len(p) + at, chat.where)
    return Example((p + r).decode("utf-8"), p.decode("utf-8"), len(p), turn)


def plain_chat_prompt(context) -> str:
    """The rendering of ``context`` for a teacher whose tokenizer has no chat template: ``Role: content`` lines
    (the role's first letter capitalised), then ``Assistant: `` — the reply follows on the same line."""
    lines = "".join(f"{m['role'][:1].upper()}{m['role'][1:]}: {m['content']}\n" for m in context)
    return lines + "Assistant: "


def teacher_prompt(tokenizer, context, where: str = "", name: str = "") -> tuple[list[int] | None, str]:
    """How a teacher reads a chat's context before the reply: ``(ids, "")`` — its own
    ``apply_chat_template(context, add_generation_prompt=True)`` token ids, when its tokenizer has a chat
    template — or ``(None, text)``: the plain rendering (:func:`plain_chat_prompt`), read as text before the reply.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None, plain_chat_prompt(context)
    try:
        out = tokenizer.apply_chat_template(list(context), tokenize=True, add_generation_prompt=True)
    except Exception as exc:  # jinja's TemplateError, raise_exception(...) in the template, ...
        raise ConfigError(f"{where or 'a chat'}: teacher {name or 'tokenizer'!r}'s chat template refuses the "
                          f"conversation ({type(exc).__name__}: {exc})") from None
    ids = out["input_ids"] if hasattr(out, "keys") else out
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids], ""


def detect_format(path: Path) -> str:
    """``"prompt"`` when the first record of a ``.jsonl`` file has ``prompt`` or ``messages``, else ``"text"``."""
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    if path.suffix != ".jsonl":
        return "text"
    for n, record in jsonl_records(path):
        if "text" in record:
            return "text"
        if "prompt" in record or "messages" in record:
            return "prompt"
        raise ConfigError(f"{path}:{n}: each line needs a field 'text' (plain text), 'prompt' (with 'response') or "
                          f"'messages' (a chat); this line has {sorted(record) or 'no fields'}")
    raise EmptyTextError(f"data file {path} holds no text")


def _prompt_response(record: dict, path: Path, n: int, tokenizer, need_response: bool) -> tuple[str, str]:
    where = f"{path}:{n}"
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: missing field 'prompt' (a string)" if prompt is None else
                          f"{where}: field 'prompt' must be a string, not {type(prompt).__name__}")
    if not prompt:
        raise ConfigError(f"{where}: field 'prompt' is empty; an on-policy sample needs something to continue")
    response = record.get("response")
    if response is None and not need_response:
        return prompt, ""
    if not isinstance(response, str):
        raise ConfigError(f"{where}: missing field 'response' (a string; it may be left out only with "
                          "on_policy 1, where the student writes every response)" if response is None else
                          f"{where}: field 'response' must be a string, not {type(response).__name__}")
    if need_response and not response:
        raise ConfigError(f"{where}: field 'response' is empty: there is nothing to learn from this line")
    return prompt, response


def render_chat(messages, tokenizer, where: str, need_response: bool = True) -> tuple[str, str]:
    """(prompt, response) of a chat rendered with the student's chat template (see :func:`render_chat_turn`)."""
    chat = render_chat_turn(messages, tokenizer, where, need_response)
    return chat.prompt, chat.response


def render_chat_turn(messages, tokenizer, where: str, need_response: bool = True) -> RenderedChat:
    """A chat rendered with the student's chat template, and where the reply lies in it.

    The prompt is the conversation before the last message, rendered with the generation prompt (what the
    student sees when it is asked to answer); the response is the rest of the full rendering. A leading BOS
    *string* the template writes is dropped when the tokenizer adds the BOS id itself — mergekd tokenises
    special-token strings as plain text, so keeping it would train on a literal "<s>". Other template markup
    (``<|im_start|>`` ...) stays as text for the same reason: byte targets exist only for text.
    The reply is found by rendering the chat again with a sentinel as the reply's content (module docstring).
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "the student's tokenizer"
        raise ConfigError(f"{where}: 'messages' lines are rendered with the student's chat template, but {name} has "
                          "none; write the lines as {\"prompt\": ..., \"response\": ...} instead, or use a student "
                          "whose tokenizer has a chat template")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ConfigError(f"{where}: field 'messages' must be a non-empty list of {{\"role\": str, \"content\": str}}")
    has_reply = messages[-1]["role"] == "assistant"
    if need_response and (not has_reply or len(messages) < 2):
        raise ConfigError(f"{where}: the last message must be the assistant's reply (role 'assistant') after at "
                          "least one other message; it is what the student learns to write")
    context = messages[:-1] if has_reply else messages
    if not context:
        raise ConfigError(f"{where}: 'messages' holds only the reply; there is no prompt to continue")
    prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    prompt = _drop_bos_string(prompt, tokenizer)
    kept = tuple(dict(m) for m in context)
    if not has_reply:
        return RenderedChat(prompt, "", kept, "", 0, where)
    full = _drop_bos_string(tokenizer.apply_chat_template(messages, tokenize=False), tokenizer)
    if not full.startswith(prompt):
        raise ConfigError(f"{where}: the student's chat template does not render the conversation as prompt + "
                          "reply (the rendering with the reply does not start with the generation prompt); write "
                          "this line as {\"prompt\": ..., \"response\": ...}")
    response = full[len(prompt):]
    if not response:
        raise ConfigError(f"{where}: the assistant's reply renders to nothing")
    before, reply = _locate_reply(messages, tokenizer, prompt, response, where)
    return RenderedChat(prompt, response, kept, reply, len(before.encode("utf-8")), where)


def _locate_reply(messages, tokenizer, prompt: str, response: str, where: str) -> tuple[str, str]:
    """(markup before the reply, the reply) in ``response``: the chat rendered with a sentinel as the reply's
    content shows what the template writes before and after the content; the reply is what lies between them in
    the real rendering, and must be (a piece of) the content — the content itself, trimmed, or its answer part."""
    content = messages[-1]["content"]
    probe = [*messages[:-1], {**messages[-1], "content": _SENTINEL}]
    try:
        marked = _drop_bos_string(tokenizer.apply_chat_template(probe, tokenize=False), tokenizer)
    except Exception:  # a template that inspects the content and rejects the sentinel: fall through to the error
        marked = ""
    rest = marked[len(prompt):] if marked.startswith(prompt) else ""
    if rest.count(_SENTINEL) == 1:
        before, after = rest.split(_SENTINEL)
        if response.startswith(before) and response.endswith(after) and len(response) >= len(before) + len(after):
            reply = response[len(before):len(response) - len(after)]
            if reply in content:
                return before, reply
    raise ConfigError(f"{where}: the student's chat template does not render the assistant's reply as its "
                      "content, so the reply's bytes cannot be found for the teachers; write this line as "
                      "{\"prompt\": ..., \"response\": ...}")


def _drop_bos_string(text: str, tokenizer) -> str:
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None or not text.startswith(bos):
        return text
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return text[len(bos):] if ids[:1] == [bos_id] else text
