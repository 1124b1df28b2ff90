"""Scale paths that actually run: LoRA, gradient accumulation, teacher swapping, the recurrent byte head inside
the loop, bf16 autocast, and what FSDP/DeepSpeed can and cannot do on CPUs.

Tiny setups as in tests/test_distill.py: two random 1-layer teachers saved with REAL tokenizers (GPT-2 and
Mistral-v1) as ``hf:`` folders, a fresh 1-layer GPT-2-vocabulary student, under a kilobyte of real text, two
optimizer steps. Every run goes through the library API ``distill(load_config(None, {...}))``; the
multi-process cases run real launchers (``torchrun``, ``accelerate launch``) in subprocesses.

FSDP and DeepSpeed on CPUs (accelerate 1.15, torch 2.13): accelerate applies FSDP only to GPU/accelerator
processes (CPU processes stay ``MULTI_CPU``, i.e. DDP) and DeepSpeed only when ``cpu`` is False, so an FSDP or
DeepSpeed accelerate config on CPUs would silently run plain data parallel; mergekd refuses it. torch's own FSDP2
(``fully_shard``) does run on CPU/gloo, which is how the export from sharded weights is tested here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from teacher_fixtures import save_tiny_teacher

from mergekd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STUDENT = "new:llama?tokenizer=gpt2&layers=1&hidden=32&heads=2&ctx=256"


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide state that refuses a second Accelerator with other settings (bf16 after
    fp32 here); clear it around each in-process run (private hook, as in mergekd.ablate)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizers):
    """Two tiny teacher folders of different tokenizers, a training and a held-out text, a base config (two
    steps of the token-trie term only, so no byte head unless a test asks for one)."""
    from mergekd.assets import read_body

    root = tmp_path_factory.mktemp("scale")
    folders = [save_tiny_teacher(root / f"teacher-{name}", tokenizers(name), seed=30 + i, max_positions=256,
                                 logit_scale=0.5) for i, name in enumerate(["gpt2", "mistral-v1"])]
    specs = [f"hf:{folder}" for folder in folders]
    text = read_body("botchan")
    (root / "train.txt").write_text(text[:800], encoding="utf-8")
    (root / "heldout.txt").write_text(text[-400:], encoding="utf-8")
    base = {"teachers": specs, "student": STUDENT, "data": str(root / "train.txt"), "device": "cpu",
            "steps": 2, "batch_size": 4, "seq_bytes": 96, "warmup_steps": 0, "lr": 1e-2, "save_every": 100,
            "teacher_max_length": 64, "mixed_precision": "no",
            "trie_kl_weight": 1.0, "kl_weight": 0.0, "byte_ce_weight": 0.0}
    yield root, base
    _reset_accelerate()


@pytest.fixture(scope="module")
def run(world):
    """run(name, **overrides) → the run's folder; each named run trains once per module (tests share them)."""
    from mergekd.distill import distill, load_config

    root, base = world
    done: dict[str, Path] = {}

    def go(name: str, **overrides) -> Path:
        if name not in done:
            out = root / "runs" / name
            _reset_accelerate()
            distill(load_config(None, {**base, "out": str(out), **overrides}), show_progress=False)
            done[name] = out
        return done[name]

    return go


def _final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def _checkpoint(out: Path) -> dict[str, torch.Tensor]:
    (last,) = sorted((out / "checkpoints").glob("step-*"))[-1:]
    return load_file(str(last / "model.safetensors"))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _initial_student() -> dict[str, torch.Tensor]:
    from mergekd.student import load_student

    return load_student(STUDENT)[0].state_dict()  # fresh students are seeded by the spec: the run's start


def _assert_plain_model(final: Path) -> None:
    """``final`` loads with plain transformers as a Llama, has no adapter/peft/byte-head keys, gives finite
    logits."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    assert not (final / "adapter_config.json").exists() and not (final / "adapter_model.safetensors").exists()
    keys = load_file(str(final / "model.safetensors")).keys()
    bad = [k for k in keys
           if any(s in k for s in ("lora_", "base_layer", "base_model", "head.")) and k != "lm_head.weight"]
    assert not bad, bad
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[464, 2068, 7586, 21831]])).logits).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


# ---------------------------------------------------------------------------------------------------------
# one process


def test_lora_trains_adapters_only_and_exports_merged_plain_weights(run):
    """lora_rank=4: during training only the adapters change (the checkpoint's base weights are the initial
    student's, lora_B left its zero init); at export the adapters are merged (each adapted linear is exactly
    W + scaling·B·A of the checkpoint), nothing else moved, and ``final/`` is a plain transformers model."""
    from mergekd.distill.loop import _with_lora
    from mergekd.student import load_student

    out = run("lora", lora_rank=4)
    initial, ckpt, final = _initial_student(), _checkpoint(out), _final(out)
    prefix = "student.base_model.model."
    adapted = sorted(k[len(prefix):-len(".base_layer.weight")] for k in ckpt if k.endswith(".base_layer.weight"))
    assert len(adapted) == 7, adapted  # q, k, v, o, gate, up, down of the one layer ("all-linear")
    probe = _with_lora(load_student(STUDENT)[0], 4)
    scaling = probe.get_submodule(f"base_model.model.{adapted[0]}").scaling["default"]
    for name in adapted:
        base = ckpt[f"{prefix}{name}.base_layer.weight"]
        a, b = ckpt[f"{prefix}{name}.lora_A.default.weight"], ckpt[f"{prefix}{name}.lora_B.default.weight"]
        torch.testing.assert_close(base, initial[f"{name}.weight"], atol=0, rtol=0)  # frozen
        assert b.abs().max() > 0, f"{name}: lora_B never trained"
        torch.testing.assert_close(final[f"{name}.weight"], base + scaling * (b @ a), atol=1e-6, rtol=1e-5)
        assert (final[f"{name}.weight"] - initial[f"{name}.weight"]).abs().max() > 1e-4  # merged, not dropped
    others = [k for k in final if not any(k == f"{n}.weight" for n in adapted)]
    assert "model.embed_tokens.weight" in others
    for k in others:  # embeddings (tied lm_head) and norms: not adapted, so not trained
        torch.testing.assert_close(final[k], initial[k], atol=0, rtol=0)
    _assert_plain_model(out / "final")


def test_grad_accum_matches_one_big_batch(run):
    """grad_accum=2 × micro-batch 2 gives the weights of grad_accum=1 × batch 4 (the same global batch).

    Why they are equal: the loss is a mean over a micro-batch's examples; accelerate's backward divides it by
    grad_accum and the optimizer steps (and zeroes) on the last micro-batch only, so the summed gradient is the
    mean over all 4 examples. A dropped micro-batch, a step or zero_grad per micro-batch would move the weights
    by ~lr. (A uniform gradient scale would not show with AdamW, which is scale-invariant; without gradient
    clipping it would not change training either.) The logged loss is the same mean."""
    one, two = run("accum-1"), run("accum-2", grad_accum=2)
    a, b = _final(one), _final(two)
    assert a.keys() == b.keys()
    moved = max(float((a[k] - v).abs().max()) for k, v in _initial_student().items() if k in a)
    assert moved > 1e-3  # the runs trained, so equality below means something
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=5e-5, rtol=1e-4, msg=k)
    for x, y in zip(_metrics(one), _metrics(two), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4) and x["trie_kl"] == pytest.approx(y["trie_kl"], abs=1e-4)


def test_swap_placement_matches_device_placement(run):
    """teacher_placement='swap' (teachers moved onto the device one at a time, back to the CPU after) gives the
    weights of 'device' with two online teachers and the token-trie term. On CPU both places are the CPU, so
    this checks the swap code path keeps teachers usable and their order; the GPU smoke test covers moving."""
    device, swap = run("accum-1"), run("swap", teacher_placement="swap")
    a, b = _final(device), _final(swap)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert all(math.isfinite(r["trie_kl"]) for r in _metrics(swap))


def test_recurrent_head_trains_in_the_loop_and_is_dropped(run):
    """byte_head='recurrent' with byte CE and KL to the mixture: finite byte_ce and kl every step, the GRU head
    is in the checkpoint (it trained with the student), and the export is a plain model without it."""
    out = run("recurrent", byte_head="recurrent", byte_ce_weight=1.0, kl_weight=1.0, trie_kl_weight=0.0)
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "token_ce", "byte_ce", "kl")), r
        assert r["byte_ce"] > 0 and r["kl"] > 0
    assert any(k.startswith("head.") for k in _checkpoint(out))
    _assert_plain_model(out / "final")


def test_bf16_autocast_runs_on_cpu(run):
    """mixed_precision='bf16' on device='cpu': the loop runs under CPU bf16 autocast with finite losses.

    CPU bf16 is here to test the autocast path (the loop, the losses' float32 casts, the export), not for
    speed: on most CPUs bf16 matmuls are no faster than float32. The losses match the float32 run's up to bf16
    rounding; the weights do not match it bit for bit (float32 runs are deterministic, so autocast really
    engaged: AdamW turns the small gradient differences into visible ones). Exported weights stay float32
    (autocast computes in bf16, the parameters stay float32)."""
    bf16, fp32 = run("bf16", mixed_precision="bf16"), run("accum-1")
    for x, y in zip(_metrics(bf16), _metrics(fp32), strict=True):
        assert all(math.isfinite(x[k]) for k in ("loss", "token_ce", "trie_kl")), x
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-2)
    low, full = _final(bf16), _final(fp32)
    assert all(t.dtype == torch.float32 for t in low.values())
    assert max(float((low[k] - full[k]).abs().max()) for k in full) > 1e-4
    _assert_plain_model(bf16 / "final")


# ---------------------------------------------------------------------------------------------------------
# FSDP / DeepSpeed

SHARD_EXPORT = textwrap.dedent('''
    """2 CPU processes (gloo) shard a tiny student with FSDP2's fully_shard, train it two steps on the same batch
    (FSDP's averaged gradient is then the 1-process one), and export it through the loop's export path: every
    rank gathers, rank 0 alone merges/evaluates/saves. Usage: OUT SPEC DATA HELDOUT."""
    import copy, datetime, os, sys
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out, spec, data, heldout = sys.argv[1:5]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=90))  # a stray collective fails, not hangs
    rank = dist.get_rank()

    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from safetensors.torch import save_file
    from torch.distributed.fsdp import fully_shard

    from mergekd.distill import load_config
    from mergekd.distill.export import export_student, gather_student_state
    from mergekd.distill.loop import _with_lora
    from mergekd.distill.objective import StudentWithHead
    from mergekd.student import build_byte_head, load_student

    # accelerate's own get_state_dict, taking its FSDP2 branch (accelerate applies FSDP to GPU processes only)
    shim = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True, is_main_process=rank == 0)
    shim.get_state_dict = lambda m: Accelerator.get_state_dict(shim, m)

    for name, lora in (("full", 0), ("lora", 4)):
        torch.manual_seed(0)
        student, tok = load_student(spec)
        if lora:
            student = _with_lora(student, lora)
        model = StudentWithHead(student, build_byte_head("parallel", student.config.hidden_size, 4), None)
        reference = copy.deepcopy(model)  # trained unsharded, the same way: what one process computes
        for layer in (student.get_base_model() if lora else student).model.layers:
            fully_shard(layer)
        fully_shard(student)  # called on its own below
        fully_shard(model)  # the root, as accelerate wraps StudentWithHead
        assert any(type(p).__name__ == "DTensor" for p in model.parameters())
        ids = torch.tensor([tok.encode("It was a bright cold day in April, and the clocks were striking.")] * 2)
        for m in (model, reference):
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
            for _ in range(2):
                m.student(input_ids=ids, labels=ids).loss.backward()
                opt.step()
                opt.zero_grad()
        state = gather_student_state(shim, model)  # every rank: a collective
        if rank == 0:
            cfg = load_config(None, {"student": spec, "data": data, "out": out, "eval_data": heldout, "steps": 2,
                                     "lora_rank": lora})
            # rank 0 alone: a collective in here (a forward or save of the sharded module) fails the run
            export_student(model.student, tok, os.path.join(out, name), cfg, show_progress=False, state_dict=state)
            plain = reference.student.merge_and_unload() if lora else reference.student
            save_file({k: v.contiguous() for k, v in plain.state_dict().items() if k != "lm_head.weight"},
                      os.path.join(out, name + "-reference.safetensors"))
        dist.barrier()
    dist.destroy_process_group()
''')


def test_fsdp2_sharded_student_exports_full_weights(world, tmp_path):
    """The export path from FSDP2-sharded weights (DTensor parameters), in 2 CPU processes with torch's
    ``fully_shard``: every rank gathers through accelerate's FSDP2 ``get_state_dict``, rank 0 alone builds a
    plain copy, merges LoRA, evaluates held-out BPB and saves. The folder loads with plain transformers and equals
    a model trained unsharded the same way (with and without LoRA). Before this path existed, rank 0's
    ``save_pretrained`` of the sharded module failed ("Cannot flatten unevenly sharded tensor")."""
    root, _ = world
    script = tmp_path / "shard_export.py"
    script.write_text(SHARD_EXPORT)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), str(script), str(out), STUDENT,
                             str(root / "train.txt"), str(root / "heldout.txt")],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    initial = _initial_student()
    for name in ("full", "lora"):
        exported, reference = load_file(str(out / name / "model.safetensors")), load_file(
            str(out / f"{name}-reference.safetensors"))
        assert exported.keys() == reference.keys()
        for k in exported:
            torch.testing.assert_close(exported[k], reference[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")
        assert max(float((exported[k] - initial[k]).abs().max()) for k in exported) > 1e-3  # it trained
        assert json.loads((out / name / "eval.json").read_text())["bytes"] > 0
        _assert_plain_model(out / name)


def test_fsdp_accelerate_config_on_cpu_is_refused(world, tmp_path):
    """``accelerate launch`` with an FSDP2 config on a CPU machine starts 2 processes that accelerate runs as
    MULTI_CPU (plain DDP, the FSDP settings ignored); mergekd refuses instead of silently not sharding."""
    root, base = world
    config = tmp_path / "fsdp-cpu.yaml"
    config.write_text(textwrap.dedent("""\
        compute_environment: LOCAL_MACHINE
        distributed_type: FSDP
        num_machines: 1
        num_processes: 2
        machine_rank: 0
        use_cpu: true
        mixed_precision: 'no'
        fsdp_config:
          fsdp_version: 2
          fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
          fsdp_reshard_after_forward: true
          fsdp_state_dict_type: FULL_STATE_DICT
        main_training_function: main
        """))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                             "--num_processes", "2", "--main_process_port", str(_free_port()),
                             "-m", "mergekd", "distill", "--student", STUDENT, "--data", str(root / "train.txt"),
                             "--out", str(out), "--ce-only", "--steps", "1", "--batch-size", "2",
                             "--seq-bytes", "96", "--device", "cpu", "--quiet"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout + result.stderr
    refusals = [line for line in result.stderr.splitlines() if line.startswith("error: device:")]
    assert refusals and "asks for FSDP" in refusals[0] and "MULTI_CPU" in refusals[0], result.stderr[-3000:]
    assert not (out / "final").exists()


@pytest.mark.parametrize("env, kind, ram_efficient, overrides, needle", [
    ({}, "FSDP", False, {"on_policy": 1.0, "kl_weight": 1.0}, "generate on an FSDP-sharded module is unsupported"),
    ({"ACCELERATE_USE_FSDP": "true"}, "MULTI_CPU", False, {}, "asks for FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "MULTI_CPU", False, {}, "asks for DEEPSPEED"),
])
def test_sharded_setups_the_loop_cannot_honour_are_refused(world, monkeypatch, env, kind, ram_efficient, overrides,
                                                          needle):
    """Checked right after the Accelerator is built (no GPU here, so its distributed type is stood in for):
    on-policy sampling under FSDP; FSDP/DeepSpeed asked for by the launcher but not applied by accelerate. FSDP
    itself is accepted, with cpu_ram_efficient_loading too: StudentWithHead delegates tie_weights (and the
    embedding getters) to the student, so accelerate re-ties a tied student's embeddings after sharded loading
    (without it an H200 run trained them as two tensors: 0.048 max weight difference from the 1-process run)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from mergekd.distill import load_config
    from mergekd.distill.loop import _check_distributed
    from mergekd.distill.objective import StudentWithHead

    assert hasattr(StudentWithHead, "tie_weights") and hasattr(StudentWithHead, "get_output_embeddings")

    def accelerator(kind: str, ram: bool = False):
        plugin = SimpleNamespace(cpu_ram_efficient_loading=ram, fsdp_version=2)
        return SimpleNamespace(distributed_type=DistributedType(kind), device=torch.device("cpu"),
                               state=SimpleNamespace(fsdp_plugin=plugin if kind == "FSDP" else None))

    root, base = world
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(None, {**base, "out": str(root / "refused"), **overrides})
    with pytest.raises(ConfigError, match=needle):
        _check_distributed(accelerator(kind, ram_efficient), cfg)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    plain = load_config(None, {**base, "out": str(root / "accepted")})
    for fine in ("MULTI_CPU", "FSDP", "NO"):  # plain data parallel, FSDP without the above, one process
        _check_distributed(accelerator(fine), plain)
    _check_distributed(accelerator("FSDP", ram=True), plain)  # re-tied through StudentWithHead.tie_weights
