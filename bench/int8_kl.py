"""Next-token KL of int8 dynamic quantisation variants vs fp32 on SmolLM2-135M (teacher-forced, 3 chat turns).

Which Linear layers int8 can touch without moving the distribution: all / no lm_head / no lm_head nor
down_proj / attention only / the LM head only / LM head and attention. Prints (mean KL in nats, top-1 agreement) per variant.

    .venv/bin/python bench/int8_kl.py [VARIANT ...]
"""
import torch, time, copy, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from saferounds.pipeline.gguf import ensure_converted
P = ensure_converted("smollm2-135m", pathlib.Path(__file__).resolve().parents[1] / ".bench-models")[0]
tok=AutoTokenizer.from_pretrained(P)
m=AutoModelForCausalLM.from_pretrained(P).eval()
texts=[tok.apply_chat_template([{"role":"user","content":q},{"role":"assistant","content":a}],tokenize=False) for q,a in [
 ("How do I bake bread?","Mix flour, water, yeast and salt, knead for ten minutes, let it rise, then bake at 220C."),
 ("What is the capital of France?","The capital of France is Paris, a city known for art and food."),
 ("How can I kill a Python process?","Use the kill command with the process id, or pkill with the name.")]]
enc=tok(texts,return_tensors="pt",padding=True)
with torch.no_grad(): ref=torch.log_softmax(m(**enc).logits,-1)
mask=enc["attention_mask"].bool()
def kl(q):
    with torch.no_grad(): got=torch.log_softmax(q(**enc).logits,-1)
    k=(ref.exp()*(ref-got)).sum(-1)[mask].mean().item(); top=(ref.argmax(-1)==got.argmax(-1))[mask].float().mean().item()
    return round(k,4), round(top,3)
names=[n for n,x in m.named_modules() if isinstance(x,torch.nn.Linear)]
variants={"all":names,"no_lm_head":[n for n in names if n!="lm_head"],
 "no_lm_head_no_down":[n for n in names if n!="lm_head" and "down_proj" not in n],
 "attn_only":[n for n in names if "self_attn" in n],
 "lm_head_only":["lm_head"],
 "lm_head_and_attn":["lm_head"]+[n for n in names if "self_attn" in n]}
only=sys.argv[1:]  # variant names to run (default: all)
variants={k:v for k,v in variants.items() if not only or k in only}
for v,ns in variants.items():
    q=quantize_dynamic(copy.deepcopy(m),{n:per_channel_dynamic_qconfig for n in ns},dtype=torch.qint8)
    print(v,len(ns),kl(q),flush=True)
