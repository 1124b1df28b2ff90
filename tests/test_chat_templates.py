"""Chat data: each teacher conditions on the prompt rendered with its OWN chat template.

Two real tokenizers whose templates differ — SmolLM2's ChatML and Gemma-3's ``<start_of_turn>`` template (the
Gemma-3-270m GGUF ships without one, so the published Gemma-3 instruct template is attached here) — on tiny random
teachers; the student (a tiny SmolLM2-vocabulary Llama) trains on its own ChatML rendering. What is compared:

- a teacher's input ids are ``apply_chat_template(context, tokenize=True, add_generation_prompt=True)`` exactly,
  followed by the reply's own canonical tokenisation (no BOS, special-token strings as plain text);
- the rows the signal places at the student's reply bytes equal an independent float64 brute force over one
  forward pass of the teacher on those ids (tests/reference_bytes.py), and every other row is masked;
- a teacher without a chat template reads the plain rendering, scored as one text (= its own byte_targets);
- on-policy samples give the same kind of view; a short distill run on a chat file goes through it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_causal_lm
from reference_bytes import BruteForce

from mergekd.errors import ConfigError

STUDENT = "new:llama?tokenizer=smollm2&layers=1&hidden=32&heads=2&ctx=256"

# Gemma-3 instruct's published chat template (google/gemma-3-*-it tokenizer_config.json), text parts.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

CHATS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": " Paris, of course.  "}],  # ChatML keeps the spaces; no template trims here
    [{"role": "user", "content": "Say hi in Japanese."},
     {"role": "assistant", "content": "こんにちは 👋 e\u0301"}],
    [{"role": "user", "content": "Two turns."}, {"role": "assistant", "content": "First."},
     {"role": "user", "content": "And the markup?"},
     {"role": "assistant", "content": "It reads <|im_end|> and <end_of_turn> as text."}],
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizers):
    """The student tokenizer, two tiny teachers (SmolLM2 ChatML, Gemma-3 with its template) saved as hf: folders
    and held in memory, and the chats as a JSONL file."""
    from mergekd.assets import load_tokenizer
    from mergekd.teachers.adapter import Teacher

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chat")
    gemma = load_tokenizer("gemma3")  # a private copy: the session's shared one keeps no template
    gemma.chat_template = GEMMA3_CHAT_TEMPLATE
    teachers = []
    for i, (name, tok) in enumerate([("smollm2", tokenizers("smollm2")), ("gemma3", gemma)]):
        model = tiny_causal_lm(len(tok), seed=40 + i, logit_scale=0.6)
        folder = root / f"tiny-{name}"
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        teachers.append(Teacher(f"hf:{folder}", model, tok))
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    return root, teachers, data, tokenizers("smollm2")


def _signal(teachers):
    from mergekd.distill.signal import TeacherSignal
    from mergekd.mix import build_mixer

    return TeacherSignal(teachers, build_mixer("linear"), torch.device("cpu"))


def _examples(world, seq_bytes=512, prompt_bytes=400):
    from mergekd.distill.prompts import read_data

    _, _, data, student_tok = world
    return read_data(data, seq_bytes=seq_bytes, prompt_bytes=prompt_bytes, tokenizer=student_tok).examples


class _Inputs:
    """Records the unpadded input ids of every sequence a model reads."""

    def __init__(self, model):
        self.seen: list[list[int]] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, attn = kwargs["input_ids"], kwargs["attention_mask"]
        self.seen += [row[a.bool()].tolist() for row, a in zip(ids.cpu(), attn.cpu())]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _template_ids(tok, context) -> list[int]:
    out = tok.apply_chat_template(list(context), tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _reply_ids(tok, reply: str) -> list[int]:
    return tok(reply, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_student_text_and_reply_span(world):
    """The student's text is its own ChatML rendering (unchanged); the reply's bytes lie at [start, end) and the
    closing markup after them."""
    from mergekd.distill.prompts import render_chat

    _, _, _, student_tok = world
    for messages, e in zip(CHATS, _examples(world)):
        prompt, response = render_chat(messages, student_tok, "x")
        assert e.text == prompt + response and e.loss_from == len(prompt.encode())
        chat = e.chat
        assert chat.context == tuple(messages[:-1]) and chat.reply == messages[-1]["content"]
        assert chat.start == e.loss_from and e.text.encode()[chat.start:chat.end] == chat.reply.encode()
        assert e.text.encode()[chat.end:] == b"<|im_end|>\n"


def test_each_teacher_reads_its_own_template_ids_then_the_reply(world):
    """(a) input ids = the teacher tokenizer's own apply_chat_template(context, add_generation_prompt=True) ids,
    then the reply's canonical ids; the two renderings differ, the reply bytes do not."""
    _, teachers, _, _ = world
    endings = {"smollm2": "<|im_start|>assistant\n", "gemma3": "<start_of_turn>model\n"}
    for e in _examples(world):
        for teacher, ending in zip(teachers, endings.values()):
            tok = teacher.tokenizer
            with _Inputs(teacher.model) as inputs:
                _signal([teacher]).per_teacher([e.text], None, [e.chat])
            prompt_ids, reply_ids = _template_ids(tok, e.chat.context), _reply_ids(tok, e.chat.reply)
            assert inputs.seen == [prompt_ids + reply_ids]
            assert tok.decode(prompt_ids).endswith(ending)
            assert teacher.vocab.decode_bytes(reply_ids) == e.chat.reply.encode()
    gemma_ids = _template_ids(teachers[1].tokenizer, CHATS[0][:-1])
    assert gemma_ids[0] == teachers[1].tokenizer.bos_token_id and gemma_ids.count(gemma_ids[0]) == 1  # one BOS


def test_reply_rows_are_aligned_byte_for_byte(world):
    """(b) rows at the student's reply bytes = float64 brute force over one forward of the teacher on (template
    ids + reply ids), at the reply's offsets; prompt and closing-markup rows are masked."""
    _, teachers, _, _ = world
    examples = _examples(world)
    per_teacher = _signal(teachers).per_teacher([e.text for e in examples], None, [e.chat for e in examples])
    for teacher, rows in zip(teachers, per_teacher):
        tok, brute = teacher.tokenizer, BruteForce(teacher.vocab.token_bytes)
        for e, got in zip(examples, rows):
            n, (start, end) = len(e.text.encode()), (e.chat.start, e.chat.end)
            assert got.logprobs.shape == (n, 257) and got.text_bytes == e.text.encode()
            assert not got.mask[:start].any() and not got.mask[end:].any()  # prompt, <|im_end|>\n: no teacher row
            assert got.mask[start:end].all()
            prompt_ids, reply_ids = _template_ids(tok, e.chat.context), _reply_ids(tok, e.chat.reply)
            with torch.no_grad():
                logits = teacher.model(input_ids=torch.tensor([prompt_ids + reply_ids])).logits[0].double()
            probs = torch.softmax(logits, -1).numpy()
            expected, pos = [], 0
            for j, tid in enumerate(reply_ids):
                b = teacher.vocab.token_bytes[tid]
                expected += [brute.row(probs[len(prompt_ids) + j - 1], b[:k]) for k in range(len(b))]
                pos += len(b)
            assert pos == end - start
            ours = got.logprobs[start:end].double().exp().numpy()
            assert np.abs(ours - np.stack(expected)).max() <= 1e-5
    # the mixture has rows exactly at the replies' bytes of the students' texts
    _, mask = _signal(teachers)([e.text for e in examples], None, [e.chat for e in examples])
    assert int(mask.sum()) == sum(len(e.chat.reply.encode()) for e in examples)


def test_long_context_slides_like_a_long_text(world):
    """A context longer than a teacher window: windows slide over template ids + reply (the leading BOS repeated,
    as for any text), every reply row comes from the documented window (>= overlap tokens of left context), and
    windows holding context only are not run."""
    from mergekd.teachers.adapter import Teacher
    from mergekd.teachers.options import TeacherOptions

    _, teachers, _, _ = world
    e = _examples(world)[2]
    max_length, overlap = 24, 9
    for base in teachers:
        teacher = Teacher(base.name, base.model, base.tokenizer, options=TeacherOptions(max_length=max_length,
                                                                                        overlap=overlap))
        tok, brute = teacher.tokenizer, BruteForce(teacher.vocab.token_bytes)
        with _Inputs(teacher.model) as inputs:
            got = _signal([teacher]).per_teacher([e.text], None, [e.chat])[0][0]
        ids = _template_ids(tok, e.chat.context) + _reply_ids(tok, e.chat.reply)
        # the BOS a tokenizer adds to any text starts every window: Gemma's <bos>; SmolLM2 adds none (its
        # bos_token <|im_start|> opens the ChatML context but is not repeated)
        adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
        lead = 1 if adds_bos and ids[0] == tok.bos_token_id else 0
        first = len(_template_ids(tok, e.chat.context)) - lead  # body index of the first reply token
        body, room = ids[lead:], max_length - lead
        stride, expected, starts = room - overlap, [], set()
        assert first > room  # the first window holds context only
        for jb in range(first, len(body)):
            start = 0
            while not (start <= jb < start + room and (start == 0 or jb - start >= overlap)):
                start += stride
            starts.add(start)
            with torch.no_grad():
                window = torch.tensor([ids[:lead] + body[start:start + room]])
                probs = torch.softmax(teacher.model(input_ids=window).logits[0].double(), -1).numpy()
            b = teacher.vocab.token_bytes[body[jb]]
            expected += [brute.row(probs[lead + jb - start - 1], b[:k]) for k in range(len(b))]
        ours = got.logprobs[e.chat.start:e.chat.end].double().exp().numpy()
        assert got.mask[e.chat.start:e.chat.end].all() and int(got.mask.sum()) == e.chat.end - e.chat.start
        assert np.abs(ours - np.stack(expected)).max() <= 1e-5
        assert len(inputs.seen) == len(starts) >= 2  # only the windows that hold reply tokens ran
        assert all(w[:lead] == ids[:lead] for w in inputs.seen)


def test_teacher_without_template_reads_the_plain_rendering(world, tokenizers):
    """(c) no chat template: ``Role: content`` lines, then ``Assistant: `` and the reply, scored as one text —
    the rows are the teacher's own byte_targets of that text, sliced at the reply."""
    from mergekd.distill.prompts import plain_chat_prompt, teacher_prompt
    from mergekd.teachers.adapter import Teacher

    tok = tokenizers("gpt2")
    assert not tok.chat_template
    teacher = Teacher("plain-gpt2", tiny_causal_lm(len(tok), seed=7, logit_scale=0.6), tok)
    e = _examples(world)[0]
    prompt = plain_chat_prompt(e.chat.context)
    assert prompt == "System: Answer briefly.\nUser: Capital of France?\nAssistant: "
    assert teacher_prompt(tok, e.chat.context) == (None, prompt)
    got = _signal([teacher]).per_teacher([e.text], None, [e.chat])[0][0]
    ref = teacher.byte_targets([prompt + e.chat.reply])[0]
    offset = len(prompt.encode())
    start, end = e.chat.start, e.chat.end
    torch.testing.assert_close(got.logprobs[start:end], ref.logprobs[offset:])
    assert got.mask[start:end].all() and int(got.mask.sum()) == end - start


def test_on_policy_samples_get_the_same_views(world):
    """(d) a sample of a chat: the continuation plays the reply — the teacher reads its template ids then the
    continuation, and rows exist only at the continuation's bytes. Plain pairs have no view."""
    from mergekd.bytes import byte_vocab_for
    from mergekd.distill.onpolicy import Sample, sample_continuations, stream_seed
    from mergekd.distill.prompts import Example
    from mergekd.student import load_student

    _, teachers, _, _ = world
    e = _examples(world)[1]
    student, tok = load_student(STUDENT)
    drawn = sample_continuations(student, byte_vocab_for(tok), [e.prompt], [stream_seed(0, 0, 0)], max_new_tokens=6)
    sample = drawn[0] if drawn[0].continuation else Sample(e.prompt, "Hi there!", 3, 0)
    view = sample.teacher_view(e)
    assert view.context == e.chat.context and view.reply == sample.continuation
    assert (view.start, view.end) == (sample.prompt_bytes, len(sample.text.encode()))
    assert Sample("Q:", " a", 1, 0).teacher_view(Example("Q: a", "Q:", 2)) is None
    teacher = teachers[1]
    with _Inputs(teacher.model) as inputs:
        got = _signal([teacher]).per_teacher([sample.text], None, [view])[0][0]
    assert inputs.seen == [_template_ids(teacher.tokenizer, e.chat.context)
                           + _reply_ids(teacher.tokenizer, sample.continuation)]
    assert not got.mask[:view.start].any() and got.mask[view.start:].all()
    # an empty continuation (the student stopped at once) has no teacher row and runs no teacher
    empty = Sample(e.prompt, "", 0, 0)
    with _Inputs(teacher.model) as inputs:
        got = _signal([teacher]).per_teacher([empty.text], None, [empty.teacher_view(e)])[0][0]
    assert inputs.seen == [] and not got.mask.any()


def test_views_are_refused_where_they_cannot_hold(world, tmp_path):
    """A reply the student's template does not render as its content is refused with FILE:LINE; a byte cache
    refuses views; a template that refuses the conversation names the chat."""
    from mergekd.cache.signal import CachedSignal
    from mergekd.distill.prompts import ChatTurn, read_data

    _, teachers, _, _ = world
    from mergekd.assets import load_tokenizer

    odd = load_tokenizer("smollm2")  # a private copy with a template that upper-cases the content
    odd.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + (m['content'] | upper) + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n" + json.dumps({"messages": CHATS[1]}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: .*reply"):
        read_data(bad, seq_bytes=256, prompt_bytes=128, tokenizer=odd)
    view = ChatTurn(({"role": "user", "content": "a"}, {"role": "user", "content": "b"}), "ok", 0, "c.jsonl:7")
    with pytest.raises(ConfigError, match=r"c.jsonl:7: .*chat template refuses"):
        _signal(teachers[1:]).per_teacher(["ok"], None, [view])
    fake = CachedSignal.__new__(CachedSignal)
    fake.cache = tmp_path
    with pytest.raises(ConfigError, match="chat views"):
        fake.per_teacher(["ok"], [0], [view])


def test_cut_examples_keep_the_reply_aligned(world):
    """A response cut to seq_bytes cuts the reply with it (never inside a character); teachers score the cut
    reply after the whole context."""
    examples = _examples(world, seq_bytes=150, prompt_bytes=120)
    full = {m[-1]["content"] for m in CHATS}
    assert any(e.chat.reply not in full for e in examples), "no reply was cut"
    for e in examples:
        data = e.text.encode()
        assert len(data) <= 150 and data[e.chat.start:e.chat.end] == e.chat.reply.encode()
    _, teachers, _, _ = world
    rows = _signal(teachers).per_teacher([e.text for e in examples], None, [e.chat for e in examples])
    for per_text in rows:
        for e, got in zip(examples, per_text):
            assert int(got.mask.sum()) == e.chat.end - e.chat.start


def test_distill_on_chat_data_passes_views(world, monkeypatch):
    """(e) two steps (one off-policy, one on-policy) on the chat file with the two template teachers: the run
    finishes, and every teacher call got a chat view per text."""
    from mergekd.distill import distill, load_config
    from mergekd.distill.onpolicy import is_on_policy_step
    from mergekd.distill.signal import TeacherSignal

    root, teachers, data, _ = world
    seed = next(s for s in range(50) if [is_on_policy_step(k, 0.5, s) for k in range(2)] == [False, True])
    seen = []
    original = TeacherSignal.per_teacher

    def spy(self, texts, indices=None, views=None):
        seen.append(views)
        return original(self, texts, indices, views)

    monkeypatch.setattr(TeacherSignal, "per_teacher", spy)
    cfg = load_config(None, {"teachers": [t.name for t in teachers], "student": STUDENT, "device": "cpu",
                             "batch_size": 2, "seq_bytes": 256, "prompt_bytes": 160, "max_new_tokens": 6,
                             "teacher_max_length": 128, "kl_weight": 1.0, "save_every": 100, "steps": 2,
                             "on_policy": 0.5, "seed": seed, "data": str(data), "out": str(root / "run")})
    final = distill(cfg, show_progress=False, teachers=teachers)
    assert (final / "config.json").is_file()
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["on_policy"] for r in rows] == [False, True] and all(np.isfinite(r["loss"]) for r in rows)
    assert len(seen) == 2 and all(v is not None and all(x is not None for x in v) for v in seen)
