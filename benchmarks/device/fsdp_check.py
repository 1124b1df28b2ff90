"""FSDP check on a GPU: accelerate FSDP2 (configs/accelerate/fsdp-gpus.yaml, one process) through the real loop
against a plain 1-process run of the same tiny config, with fsdp_cpu_ram_efficient_loading false (the shipped
config) and true; prints the max |weight difference| of the exports. Needs a CUDA machine; never run by tests.

Usage: python3 benchmarks/device/fsdp_check.py OUT cuda
Measured on one H200 (docs/measurements/fsdp-h200.json): 7.3e-6 for both settings (it was 0.048 with
cpu_ram_efficient_loading before StudentWithHead delegated tie_weights)."""
import json, subprocess, sys, time
from pathlib import Path

import torch

out, device = Path(sys.argv[1]), sys.argv[2]
repo = Path(__file__).resolve().parents[2]
work = Path("/tmp/scale_check")
work.mkdir(parents=True, exist_ok=True)
out.mkdir(parents=True, exist_ok=True)
from mergekd.assets import load_tokenizer, read_body
from transformers import LlamaConfig, LlamaForCausalLM

tok = load_tokenizer("smollm2")
torch.manual_seed(0)
teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                       tie_word_embeddings=False))
teacher.save_pretrained(work / "teacher")
tok.save_pretrained(work / "teacher")
text = read_body("botchan")
(work / "train.txt").write_text(text[:3000])
(work / "heldout.txt").write_text(text[-1000:])
cfg = {"teachers": [f"hf:{work / 'teacher'}"], "student": "new:llama?tokenizer=mistral-v3&layers=2&hidden=64&heads=4&ctx=256",
       "data": str(work / "train.txt"), "eval_data": str(work / "heldout.txt"), "steps": 4, "batch_size": 4,
       "seq_bytes": 128, "warmup_steps": 0, "lr": 1e-2, "save_every": 2, "teacher_max_length": 64,
       "trie_kl_weight": 1.0, "kl_weight": 0.5, "byte_ce_weight": 1.0, "device": device, "mixed_precision": "no"}
(work / "cfg.json").write_text(json.dumps(cfg))
fsdp_cfg = str(repo / "configs/accelerate/fsdp-gpus.yaml")
results = {}


def run(name, args, launch=None, expect_fail=None):
    if launch is None:
        cmd = [sys.executable, "-m", "mergekd", "distill", "-c", str(work / "cfg.json"), "--quiet", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", fsdp_cfg, "--num_processes", "1",
               *launch, "-m", "mergekd", "distill", "-c", str(work / "cfg.json"), "--quiet", *args]
    t = time.time()
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=200)
    ok = p.returncode == 0
    tail = (p.stdout + p.stderr)[-2500:]
    print(f"== {name}: rc={p.returncode} {time.time() - t:.0f}s", flush=True)
    if not ok or expect_fail:
        print(tail, flush=True)
    results[name] = {"rc": p.returncode, "tail": tail[-1200:]}
    with (out / "logs.txt").open("a") as fh:
        fh.write(f"\n===== {name}: {' '.join(cmd)}\n" + p.stdout + p.stderr)
    return ok


def weights(folder):
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "final" / "model.safetensors"))


def compare(a, b):
    wa, wb = weights(work / a), weights(work / b)
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) if wa.keys() == wb.keys() else None
    results[f"{a}_vs_{b}"] = {"same_keys": wa.keys() == wb.keys(), "max_abs": diff}
    print(f"== {a} vs {b}: same keys {wa.keys() == wb.keys()} max |diff| {diff}", flush=True)


def plain(name):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(work / name / "final")
    keys = list(weights(work / name))
    bad = [k for k in keys if "lora" in k or "base_layer" in k or ("head." in k and k != "lm_head.weight")]
    ev = json.loads((work / name / "final" / "eval.json").read_text())
    results[f"{name}_plain"] = {"class": type(m).__name__, "bad_keys": bad[:5], "bpb": ev["bpb"]}
    print(f"== {name} loads as {type(m).__name__}, bad keys {bad[:5]}, bpb {ev['bpb']:.4f}", flush=True)


print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), flush=True)
true_cfg = work / "fsdp-true.yaml"
true_cfg.write_text(Path(fsdp_cfg).read_text().replace("fsdp_cpu_ram_efficient_loading: false",
                                                       "fsdp_cpu_ram_efficient_loading: true"))
fp32 = ["--mixed_precision", "no"]
run("plain", ["--out", str(work / "plain")])
if run("fsdp", ["--out", str(work / "fsdp")], launch=fp32):
    compare("plain", "fsdp")
fsdp_cfg = str(true_cfg)
if run("fsdp_true", ["--out", str(work / "fsdp_true")], launch=fp32):
    compare("plain", "fsdp_true")
(out / "results.json").write_text(json.dumps(results, indent=1))
