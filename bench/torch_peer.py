#!/usr/bin/python3
"""PyTorch performance peer for `deno task bench`.

A BERT encoder written from the math with plain torch ops (no transformers),
equivalent to tinystill's: word+position+token-type embeddings, LayerNorm
(eps 1e-12), post-LN layers (Q/K/V, scores QK^T/sqrt(d) + (1-mask)*-10000,
softmax, dropout 0.1 in training, output dense + residual + LN, FFN with exact
erf GELU + residual + LN), tanh pooler, classifier.

  /usr/bin/python3 bench/torch_peer.py --workload forward|train|sgemm --layers 4 \
      --hidden 312 --heads 12 --ffn 1200 --vocab 30522 --labels 2 --batch 32 \
      --seq 128 --threads 2 --warmup 2 --steps 3 [--all-outputs] [--device cpu|cuda|auto]

Prints one JSON line: workload, tokens_per_sec, ms_per_step, threads, torch,
blas, gflops_sgemm (best torch.mm over n = 512, 1024, 2048 at the same thread count),
device, first_ms (the first warm-up step: CUDA/cuBLAS initialisation on a GPU).
`--device cuda` (or `auto` when torch.cuda.is_available()) runs on the GPU in strict fp32
(TF32 off), synchronising around each step; its sgemm is over n = 2048, 4096, 8192.
`--workload sgemm` prints only workload, threads, torch, blas and gflops_sgemm.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--workload", choices=["forward", "train", "sgemm"], default="forward")
for name, default in [("layers", 4), ("hidden", 312), ("heads", 12), ("ffn", 1200),
                      ("vocab", 30522), ("labels", 2), ("batch", 32), ("seq", 128),
                      ("threads", 2), ("warmup", 2), ("steps", 3), ("max-pos", 512)]:
    p.add_argument(f"--{name}", type=int, default=default)
p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
p.add_argument("--all-outputs", action="store_true",
               help="forward: also keep every hidden state and pre-softmax score tensor")
args = p.parse_args()

# Pin BLAS/OpenMP pools before torch loads them (set_num_threads may not reach OpenBLAS).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:
    print(json.dumps({"error": f"torch not importable ({e}); install python3-torch "
                               "libopenblas0-pthread and run with /usr/bin/python3"}))
    sys.exit(0)

torch.set_num_threads(args.threads)
if args.device == "auto":
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
if args.device == "cuda" and not torch.cuda.is_available():
    print(json.dumps({"error": "--device cuda: torch.cuda.is_available() is False"}))
    sys.exit(0)
DEV = torch.device(args.device)
if args.device == "cuda":
    # strict fp32, comparable with an fp32 peak (no TF32 tensor cores)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


torch.manual_seed(0)
EPS, DROP = 1e-12, 0.1


def linear(i, o):
    m = nn.Linear(i, o)
    nn.init.normal_(m.weight, std=0.02)
    nn.init.zeros_(m.bias)
    return m


class Layer(nn.Module):
    def __init__(self, h, heads, ffn):
        super().__init__()
        self.heads, self.d = heads, h // heads
        self.q, self.k, self.v, self.o = linear(h, h), linear(h, h), linear(h, h), linear(h, h)
        self.ln1, self.ln2 = nn.LayerNorm(h, eps=EPS), nn.LayerNorm(h, eps=EPS)
        self.up, self.down = linear(h, ffn), linear(ffn, h)

    def forward(self, x, mask_add):
        b, s, h = x.shape
        split = lambda t: t.view(b, s, self.heads, self.d).transpose(1, 2)  # [b, heads, s, d]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d) + mask_add  # pre-softmax
        probs = F.dropout(torch.softmax(scores, dim=-1), DROP, self.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + F.dropout(self.o(ctx), DROP, self.training))
        ff = self.down(F.gelu(self.up(x)))  # exact erf GELU
        return self.ln2(x + F.dropout(ff, DROP, self.training)), scores


class Bert(nn.Module):
    def __init__(self, a):
        super().__init__()
        h = a.hidden
        self.word, self.pos, self.tok_type = (nn.Embedding(a.vocab, h), nn.Embedding(a.max_pos, h),
                                          nn.Embedding(2, h))
        for e in (self.word, self.pos, self.tok_type):
            nn.init.normal_(e.weight, std=0.02)
        self.ln = nn.LayerNorm(h, eps=EPS)
        self.layers = nn.ModuleList(Layer(h, a.heads, a.ffn) for _ in range(a.layers))
        self.pooler, self.cls = linear(h, h), linear(h, a.labels)

    def forward(self, ids, mask, keep_all=False):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.pos(pos)[None] + self.tok_type(torch.zeros_like(ids))
        x = F.dropout(self.ln(x), DROP, self.training)
        mask_add = ((1.0 - mask[:, None, None, :]) * -10000.0)
        hidden, scores = [x], []
        for layer in self.layers:
            x, sc = layer(x, mask_add)
            if keep_all:
                hidden.append(x)
                scores.append(sc)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        logits = self.cls(F.dropout(pooled, DROP, self.training))
        return (logits, hidden, scores) if keep_all else logits


def sgemm_gflops(sizes=(512, 1024, 2048), reps=5):
    """Best GFLOP/s of torch.mm on n x n over the sizes (each after one warm-up call)."""
    if args.device == "cuda":
        sizes = (2048, 4096, 8192)
    out = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
        torch.mm(a, b)
        sync()
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t)
        out = max(out, 2 * n ** 3 / best / 1e9)
    return out


def blas_name():
    """BLAS as torch's build config names it; Debian's 'generic' means libblas.so.3, so
    resolve which implementation that actually loaded (OpenBLAS or the reference BLAS)."""
    cfg = torch.__config__.show()
    info = next((f.split("=", 1)[1] for f in cfg.replace(",", " ").split()
                 if f.startswith("BLAS_INFO=")), "unknown")
    if info != "generic":
        return {"mkl": "MKL", "open": "OpenBLAS"}.get(info, info)
    try:
        libs = [l.split()[-1] for l in open("/proc/self/maps") if "libblas.so" in l]
    except OSError:
        return "generic"
    path = libs[0].lower() if libs else ""
    for key, name in (("openblas", "OpenBLAS"), ("blis", "BLIS"), ("atlas", "ATLAS"), ("mkl", "MKL")):
        if key in path:
            return name
    return "reference" if path else "generic"


if args.workload == "sgemm":
    print(json.dumps({"workload": "sgemm", "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "blas": blas_name(),
                      "gflops_sgemm": sgemm_gflops()}))
    sys.exit(0)

model = Bert(args).to(DEV)
ids = torch.randint(min(1000, args.vocab - 1), min(30000, args.vocab), (args.batch, args.seq),
                    device=DEV)
mask = torch.ones(args.batch, args.seq, device=DEV)
labels = torch.randint(0, args.labels, (args.batch,), device=DEV)

if args.workload == "forward":
    model.eval()

    def step():
        with torch.no_grad():
            return model(ids, mask, keep_all=args.all_outputs)
else:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ids, mask), labels)
        loss.backward()
        opt.step()
        return loss.item()

first_ms = None
for _ in range(args.warmup):
    t = time.perf_counter()
    step()
    sync()
    first_ms = first_ms if first_ms is not None else (time.perf_counter() - t) * 1000
times = []
for _ in range(args.steps):
    sync()
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
sec = statistics.median(times)

print(json.dumps({
    "workload": args.workload,
    "tokens_per_sec": args.batch * args.seq / sec,
    "ms_per_step": sec * 1000,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "blas": blas_name(),
    "gflops_sgemm": sgemm_gflops(),
    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    "first_ms": first_ms,
}))
