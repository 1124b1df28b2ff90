"""``mergekd vocab``: how a tokenizer's ids map to bytes, and how a text's tokens line up with its bytes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..assets import TOKENIZERS
from .options import model_options, validated, with_options


class VocabOptions(BaseModel):
    """``mergekd vocab TOKENIZER``; the tokenizer names come from the offline tokenizer registry."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(description=f"offline tokenizer name ({', '.join(TOKENIZERS)}) or a local tokenizer "
                                       "folder")
    text: str = Field("Hello  world\n\t日本語 😀 <|endoftext|>", description="text to align")


@with_options(model_options(VocabOptions, arguments=("tokenizer",)))
def vocab_command(**options) -> None:
    """Show how a tokenizer's ids map to bytes, and how a text's tokens line up with its bytes.

    Example: mergekd vocab gemma3 --text "Hello world"
    """
    from rich.console import Console
    from rich.table import Table

    from ..assets import load_tokenizer
    from ..bytes import byte_vocab_for

    opts = validated(VocabOptions, options, "vocab")
    console = Console(stderr=False)
    tok = load_tokenizer(opts.tokenizer)
    vocab = byte_vocab_for(tok, opts.tokenizer)
    specials = sum(b is None for b in vocab.token_bytes)
    console.print(f"[bold]{vocab.name}[/]: {len(vocab)} ids, scheme {vocab.scheme}, dummy prefix "
                  f"{'yes' if vocab.adds_dummy_prefix else 'no'}, {specials} special ids, eos {list(vocab.eos_ids)}")
    align = vocab.align(opts.text)
    table = Table("token", "id", "bytes", "text span")
    for tid, start, length in zip(align.token_ids.tolist(), align.token_start.tolist(), align.token_len.tolist()):
        spelled = vocab.token_bytes[tid]
        span = "(special)" if spelled is None else f"[{max(start, 0)}, {start + length})"
        table.add_row(repr(tok.convert_ids_to_tokens(tid)), str(tid), repr(spelled), span)
    console.print(table)
