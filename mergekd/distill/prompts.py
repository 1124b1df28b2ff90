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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import jsonl_records, load_chunks
from ..text import utf8_prefix, utf8_suffix
from ..errors import ConfigError, EmptyTextError


@dataclass(frozen=True)
class Example:
    text: str  # what an off-policy batch trains on (prompt + response, or a plain-text chunk)
    prompt: str  # what an on-policy batch conditions the student's sample on
    loss_from: int  # UTF-8 byte offset in ``text`` where the loss starts (0 for plain text)


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
        prompt, response = _prompt_response(record, path, n, tokenizer, need_response)
        p = utf8_suffix(prompt.encode("utf-8"), prompt_bytes)
        r = utf8_prefix(response.encode("utf-8"), seq_bytes - len(p)) if response else b""
        examples.append(Example((p + r).decode("utf-8"), p.decode("utf-8"), len(p)))
    if not examples:
        raise EmptyTextError(f"data file {path} holds no examples")
    return TrainingData(examples, "prompt")


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
    if "messages" in record:
        return render_chat(record["messages"], tokenizer, where, need_response)
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
    """(prompt, response) of a chat rendered with the student's chat template.

    The prompt is the conversation before the last message, rendered with the generation prompt (what the
    student sees when it is asked to answer); the response is the rest of the full rendering. A leading BOS
    *string* the template writes is dropped when the tokenizer adds the BOS id itself — mergekd tokenises
    special-token strings as plain text, so keeping it would train on a literal "<s>". Other template markup
    (``<|im_start|>`` ...) stays as text for the same reason: byte targets exist only for text.
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
    if not has_reply:
        return prompt, ""
    full = _drop_bos_string(tokenizer.apply_chat_template(messages, tokenize=False), tokenizer)
    if not full.startswith(prompt):
        raise ConfigError(f"{where}: the student's chat template does not render the conversation as prompt + "
                          "reply (the rendering with the reply does not start with the generation prompt); write "
                          "this line as {\"prompt\": ..., \"response\": ...}")
    response = full[len(prompt):]
    if not response:
        raise ConfigError(f"{where}: the assistant's reply renders to nothing")
    return prompt, response


def _drop_bos_string(text: str, tokenizer) -> str:
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None or not text.startswith(bos):
        return text
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return text[len(bos):] if ids[:1] == [bos_id] else text
