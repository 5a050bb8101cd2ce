#!/usr/bin/env python3
"""Independent PyTorch reference for tinystill's BERT, its heads, objectives, distillation loss
terms and AdamW (tests only).

Written from the math with plain torch ops (no `transformers`, no `safetensors` package, nothing
of tinystill's code): reads a Hugging Face BERT checkpoint directory (config.json +
model.safetensors, parsed by hand) and runs the forward pass with Hugging Face `BertModel`
semantics in eval mode (no dropout), every head the checkpoint has, and — per *job* — one
training objective: its loss, the gradient of every parameter (autograd) and the parameters after
one `torch.optim.AdamW` step (optionally after `clip_grad_norm_`).

Usage:
    python3 bert_torch.py CHECKPOINT_DIR INPUTS_JSON OUTPUT_FILE

INPUTS_JSON:
    {
      "input_ids": [[int]], "attention_mask": [[0|1]], "token_type_ids": [[int]],
      "dtype": "float64" | "float32",       # compute dtype (default float64)
      "mlm": true,                          # legacy mode: compute MLM logits (jobs mode: always)
      # legacy mode (no "jobs"): classification on "labels", as jobs mode's one job without a name
      "labels": [int],
      "adamw": {...},                       # see the job's "adamw"
      # jobs mode
      "float_labels": [float],              # regression targets [B]
      "token_labels": [[int]],              # token classification [B][S], -100: not labelled
      "start_positions": [int], "end_positions": [int],   # QA gold spans [B]
      "mlm_labels": [[int]],                # MLM targets [B][S], -100: not a masked position
      "tensors": "PATH",                    # safetensors (F32/F64) of named job tensors, below
      "jobs": [JOB, ...]
    }

JOB:
    {
      "name": "j",                          # output prefix
      "objective": "classification" | "regression" | "mlm" | "token_classification" | "span"
                   | "distillation",
      # distillation only
      "terms": [{"name": "attention_mse", "weight": 1.0, "temperature": 1.0}, ...],
      "layer_map": [0, 2, 4],               # teacher hidden-state index per student index 0..M
      "embeddings": true,                   # hidden_mse includes index 0
      "projection": "shared" | "per-layer",
      "set": "s",                           # job tensors "s.<key>" of the tensors file: teacher
                                            # targets t_hidden_<i> [B,S,Ht], t_scores_<l>
                                            # [B,ht,S,S], t_values_<l> [B,ht,S,dt], t_logits
                                            # [B,C] | [B,S,C] | [B,S,2]; extra parameters
                                            # distill.fit_dense[.<m>].{weight,bias}
      "adamw": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01,
                "max_grad_norm": 1.0}       # optional; max_grad_norm null = no clipping
    }

OUTPUT_FILE is a safetensors file (F64 for float64, F32 for float32) holding:
    hidden_states.{i}      [B, S, H], i = 0 (embedding output) .. L
    attention_scores.{l}   [B, heads, S, S], pre-softmax, with (1 - mask) * -10000 added
    values.{l}             [B, heads, S, d], layer l's value vectors
    pooled                 [B, H]            (the checkpoint has a pooler)
    logits                 [B, C]            (sequence classifier)
    token_logits           [B, S, C]         (token classifier: BertForTokenClassification)
    span_logits            [B, S, 2]         (QA head: start at 0, end at 1)
    mlm_logits             [B, S, V]         (MLM head)
    {job}.loss             []                the job's loss
    {job}.term.{name}      []                each distillation term's (unweighted) value
    {job}.grad.{name}      d loss / d param, for every parameter that gets a gradient
    {job}.grad_norm        []                global L2 norm of those gradients (before clipping)
    {job}.updated.{name}   every parameter after one AdamW step ("adamw" given)
In legacy mode the job prefix is empty (`loss`, `grad.{name}`, ...). Parameter names are the
base-model names (no `bert.` prefix). `__metadata__["{job}.no_grad"]` (legacy: `no_grad`) lists
(comma-separated) the parameters the loss does not reach (no `grad.` entry; AdamW skips them).

The definitions (s = student, t = teacher; `len_b` real tokens of example b; "real" = mask 1):
- classification: mean cross-entropy over the rows whose label is not -100.
- regression: mean of (logit - y)^2.
- token_classification: mean cross-entropy over the tokens whose label is not -100.
- span: for each example the start and the end distribution over its real positions (softmax of
  the QA logits of those positions only): mean cross-entropy over the 2B distributions.
- mlm: mean cross-entropy of the MLM logits at the positions whose label is not -100.
- distillation: sum of weight * term, the terms as tinystill's `graph/losses.ts` defines them:
  heads matched by averaging groups of k consecutive heads of the larger side;
  attention_mse: per mapped layer, entries <= -100 set to 0 on both sides, sum over real
  (query, key) pairs of (s - t)^2 / (h * sum len_b^2), summed over layers;
  hidden_mse: per mapped index (from 0 when "embeddings"), the student state projected
  (y = x W^T + b, identity without a projection), sum over real tokens of |y - t|^2 /
  (sum len_b * Ht), summed; cosine: sum over real tokens of 1 - cos(y_M, t) / sum len_b with
  |x| = sqrt(sum x^2 + 1e-16); attention_kl: on the last mapped layer, per head and real query
  row, KL(softmax(t) || softmax(s)) over real keys, / (h * sum len_b); value_relation: the same
  on V V^T / sqrt(d) of each side; prediction rows: one per example (sequence classifier), one
  per real token (token classifier), the 2B start/end distributions over real positions (QA);
  soft_ce: sum over rows of -softmax(t/T) . log_softmax(s/T), / (B C) (sequence), / (rows C)
  (tokens), / 2B (QA); kl: T^2 * sum over rows of KL(p_t || p_s) / rows; logit_mse: sum of
  (s - t)^2 over rows and classes (QA: real positions) / (B C), (rows C), (2B S) respectively;
  hard_ce: mean cross-entropy over the rows whose gold label is not -100.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

BASE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
MASK_VALUE = -10000.0


# ------------------------------------------------------------------------------------------
# safetensors, by hand


def read_safetensors(path):
    """Return {name: float64 numpy array} for float tensors; integer buffers are skipped."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    data = raw[8 + header_len :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = entry["dtype"], entry["shape"]
        start, end = entry["data_offsets"]
        if end > len(data):
            raise ValueError(f"{path}: {name}: data past the end of the file")
        chunk = data[start:end]
        if dtype == "F32":
            arr = np.frombuffer(chunk, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(chunk, dtype="<f2")
        elif dtype == "BF16":
            bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype == "F64":
            arr = np.frombuffer(chunk, dtype="<f8")
        elif dtype in ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"):
            continue  # buffers such as embeddings.position_ids
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {dtype}")
        out[name] = arr.astype(np.float64).reshape(shape)
    return out


def write_safetensors(path, tensors, dtype, metadata):
    """Write {name: torch tensor} as safetensors with one float dtype (F64 or F32)."""
    np_dtype, st_dtype = ("<f8", "F64") if dtype == torch.float64 else ("<f4", "F32")
    header = {"__metadata__": metadata}
    blobs = []
    pos = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name].detach().cpu().numpy().astype(np_dtype))
        blob = arr.tobytes()
        header[name] = {
            "dtype": st_dtype,
            "shape": list(arr.shape),
            "data_offsets": [pos, pos + len(blob)],
        }
        blobs.append(blob)
        pos += len(blob)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def normalize_name(name):
    """Base-model name of a stored tensor, or None for a buffer to drop."""
    if name.startswith("bert.") and name[5:].startswith(BASE_PREFIXES):
        name = name[5:]
    if name == "embeddings.position_ids":
        return None
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def load_checkpoint(directory):
    """config.json and {base name: float64 numpy array} of the checkpoint's parameters."""
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    stored = read_safetensors(os.path.join(directory, "model.safetensors"))
    params = {}
    for name, arr in stored.items():
        norm = normalize_name(name)
        if norm is None:
            continue
        params[norm] = arr
    if "cls.predictions.bias" not in params and "cls.predictions.decoder.bias" in params:
        params["cls.predictions.bias"] = params["cls.predictions.decoder.bias"]
    params.pop("cls.predictions.decoder.bias", None)
    params.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
    params = {n: a for n, a in params.items() if not n.startswith("cls.seq_relationship.")}
    return config, params


def leaves(arrays, dtype):
    """Fresh leaf tensors (requires_grad) of {name: numpy array}."""
    return {n: torch.tensor(a, dtype=dtype, requires_grad=True) for n, a in arrays.items()}


# ------------------------------------------------------------------------------------------
# the model, from the math


def linear(x, params, prefix):
    """nn.Linear: y = x W^T + b with W stored [out, in]."""
    return x @ params[prefix + ".weight"].t() + params[prefix + ".bias"]


def layer_norm(x, params, prefix, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as nn.LayerNorm
    normalized = (x - mean) / torch.sqrt(var + eps)
    return normalized * params[prefix + ".weight"] + params[prefix + ".bias"]


def activation(name):
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "gelu_new":
        c = math.sqrt(2.0 / math.pi)
        return lambda x: 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x**3)))
    if name == "relu":
        return lambda x: torch.clamp(x, min=0.0)
    raise ValueError(f"unsupported hidden_act {name}")


def softmax_last(s):
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values.detach())
    return e / e.sum(dim=-1, keepdim=True)


def log_softmax_last(s):
    return s - torch.logsumexp(s, dim=-1, keepdim=True)


def head_kind(config, params):
    """Which classifier the checkpoint has: "sequence", "token", or None (from its class)."""
    arch = (config.get("architectures") or [""])[0]
    if "classifier.weight" not in params:
        return None
    return "token" if arch == "BertForTokenClassification" else "sequence"


def forward(config, params, input_ids, attention_mask, token_type_ids):
    B, S = input_ids.shape
    H = config["hidden_size"]
    nh = config["num_attention_heads"]
    d = H // nh
    L = config["num_hidden_layers"]
    eps = config.get("layer_norm_eps", 1e-12)
    act = activation(config.get("hidden_act", "gelu"))
    dtype = params["embeddings.word_embeddings.weight"].dtype

    words = params["embeddings.word_embeddings.weight"][input_ids]
    positions = params["embeddings.position_embeddings.weight"][torch.arange(S)].unsqueeze(0)
    types = params["embeddings.token_type_embeddings.weight"][token_type_ids]
    h = layer_norm(words + positions + types, params, "embeddings.LayerNorm", eps)

    additive = ((1.0 - attention_mask.to(dtype)) * MASK_VALUE).view(B, 1, 1, S)
    hidden_states = [h]
    scores_all = []
    values_all = []
    for layer in range(L):
        p = f"encoder.layer.{layer}."

        def heads(x):
            return x.view(B, S, nh, d).permute(0, 2, 1, 3)  # head h = features h*d..(h+1)*d

        q = heads(linear(h, params, p + "attention.self.query"))
        k = heads(linear(h, params, p + "attention.self.key"))
        v = heads(linear(h, params, p + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + additive
        scores_all.append(scores)
        values_all.append(v)
        context = (softmax_last(scores) @ v).permute(0, 2, 1, 3).reshape(B, S, H)
        attn = layer_norm(
            linear(context, params, p + "attention.output.dense") + h,
            params,
            p + "attention.output.LayerNorm",
            eps,
        )
        inter = act(linear(attn, params, p + "intermediate.dense"))
        h = layer_norm(
            linear(inter, params, p + "output.dense") + attn, params, p + "output.LayerNorm", eps
        )
        hidden_states.append(h)

    out = {"hidden_states": hidden_states, "attention_scores": scores_all, "values": values_all}
    kind = head_kind(config, params)
    if "pooler.dense.weight" in params:
        out["pooled"] = torch.tanh(linear(h[:, 0, :], params, "pooler.dense"))
    if kind == "sequence":
        out["logits"] = linear(out["pooled"], params, "classifier")
    elif kind == "token":
        out["token_logits"] = linear(h, params, "classifier")
    if "qa_outputs.weight" in params:
        out["span_logits"] = linear(h, params, "qa_outputs")
    if "cls.predictions.transform.dense.weight" in params:
        t = act(linear(h, params, "cls.predictions.transform.dense"))
        t = layer_norm(t, params, "cls.predictions.transform.LayerNorm", eps)
        decoder = params["embeddings.word_embeddings.weight"]  # tied
        out["mlm_logits"] = t @ decoder.t() + params["cls.predictions.bias"]
    return out


def cross_entropy(logits, labels):
    """Mean over the rows whose label is not -100 of -log softmax(logits)[label]."""
    keep = labels != -100
    log_probs = log_softmax_last(logits[keep])
    picked = log_probs.gather(1, labels[keep].view(-1, 1)).view(-1)
    return -picked.sum() / max(int(keep.sum()), 1)


def no_decay(name):
    return name.endswith(".bias") or "LayerNorm." in name


# ------------------------------------------------------------------------------------------
# distillation terms, from their definitions


def group_mean(x, k):
    """Mean of groups of k consecutive heads of x [B, h, ...]."""
    if k == 1:
        return x
    B, h = x.shape[0], x.shape[1]
    return x.reshape(B, h // k, k, *x.shape[2:]).mean(dim=2)


def match_heads(s, t):
    hs, ht = s.shape[1], t.shape[1]
    if hs == ht:
        return s, t
    if ht % hs == 0:
        return s, group_mean(t, ht // hs)
    if hs % ht == 0:
        return group_mean(s, hs // ht), t
    raise ValueError(f"head counts {hs} (student) and {ht} (teacher) do not divide")


def kl_rows(lt, ls):
    """Sum over rows of KL(p_t || p_s) from log-probabilities."""
    return (torch.exp(lt) * (lt - ls)).sum()


class Distill:
    """The student's forward and the job's teacher targets, as the terms read them."""

    def __init__(self, job, out, params, targets, lengths, head, gold, seq):
        self.job = job
        self.out = out
        self.params = params
        self.targets = targets
        self.lengths = lengths
        self.head = head
        self.gold = gold
        self.S = seq
        self.layer_map = job["layer_map"]
        self.M = len(self.layer_map) - 1

    def target(self, key):
        if key not in self.targets:
            raise KeyError(f"job {self.job['name']}: no target {key}")
        return self.targets[key]

    def projected(self, m):
        """Student hidden state m projected to the teacher's width [B, S, Ht]."""
        name = (
            "distill.fit_dense"
            if self.job.get("projection", "shared") == "shared"
            else f"distill.fit_dense.{m}"
        )
        h = self.out["hidden_states"][m]
        if name + ".weight" not in self.params:
            return h
        return linear(h, self.params, name)

    def real_tokens(self, x):
        """Rows [n, ...] of the real tokens of x [B, S, ...] (example by example)."""
        return torch.cat([x[b, :n] for b, n in enumerate(self.lengths)], dim=0)

    def rows(self):
        """Prediction rows: a list of (student row, teacher row, gold) and the row count."""
        rows = []

        def gold(key, *index):  # -100 (no gold row) when the batch has no such labels
            value = self.gold.get(key)
            for i in index:
                value = None if value is None else value[i]
            return -100 if value is None else int(value)

        if self.head == "sequence":
            zs, zt = self.out["logits"], self.target("t_logits")
            for b in range(zs.shape[0]):
                rows.append((zs[b], zt[b], gold("labels", b)))
        elif self.head == "token":
            zs, zt = self.out["token_logits"], self.target("t_logits")
            for b, n in enumerate(self.lengths):
                for i in range(n):
                    rows.append((zs[b, i], zt[b, i], gold("token_labels", b, i)))
        elif self.head == "qa":
            zs, zt = self.out["span_logits"], self.target("t_logits")
            for k, key in ((0, "start_positions"), (1, "end_positions")):
                for b, n in enumerate(self.lengths):
                    rows.append((zs[b, :n, k], zt[b, :n, k], gold(key, b)))
        else:
            raise ValueError("a prediction-layer term needs a classifier or a QA head")
        return rows

    # --- the terms -----------------------------------------------------------------------

    def attention_mse(self, T):
        total = 0.0
        for m in range(1, self.M + 1):
            s, t = match_heads(
                self.out["attention_scores"][m - 1],
                self.target(f"t_scores_{self.layer_map[m] - 1}"),
            )
            h = s.shape[1]
            s = torch.where(s <= -100, torch.zeros_like(s), s)
            t = torch.where(t <= -100, torch.zeros_like(t), t)
            acc = 0.0
            for b, n in enumerate(self.lengths):
                acc = acc + ((s[b, :, :n, :n] - t[b, :, :n, :n]) ** 2).sum()
            total = total + acc / max(h * sum(n * n for n in self.lengths), 1)
        return total

    def hidden_mse(self, T):
        total = 0.0
        start = 0 if self.job.get("embeddings", True) else 1
        for m in range(start, self.M + 1):
            y = self.real_tokens(self.projected(m))
            t = self.real_tokens(self.target(f"t_hidden_{self.layer_map[m]}"))
            total = total + ((y - t) ** 2).sum() / max(y.shape[0] * t.shape[1], 1)
        return total

    def cosine(self, T):
        s = self.real_tokens(self.projected(self.M))
        t = self.real_tokens(self.target(f"t_hidden_{self.layer_map[self.M]}"))
        ns = torch.sqrt((s**2).sum(-1) + 1e-16)
        nt = torch.sqrt((t**2).sum(-1) + 1e-16)
        cos = (s * t).sum(-1) / (ns * nt)
        return (1 - cos).sum() / max(s.shape[0], 1)

    def _row_kl(self, pairs, h):
        """KL over real keys of [h, n, n] student/teacher score pairs, / (h * sum len_b)."""
        total = 0.0
        for s, t in pairs:
            total = total + kl_rows(log_softmax_last(t), log_softmax_last(s))
        return total / max(h * sum(self.lengths), 1)

    def attention_kl(self, T):
        s, t = match_heads(
            self.out["attention_scores"][self.M - 1],
            self.target(f"t_scores_{self.layer_map[self.M] - 1}"),
        )
        pairs = [(s[b, :, :n, :n], t[b, :, :n, :n]) for b, n in enumerate(self.lengths)]
        return self._row_kl(pairs, s.shape[1])

    def value_relation(self, T):
        vs = self.out["values"][self.M - 1]
        vt = self.target(f"t_values_{self.layer_map[self.M] - 1}")
        pairs = []
        h = None
        for b, n in enumerate(self.lengths):
            a, c = vs[b : b + 1, :, :n], vt[b : b + 1, :, :n]
            rs = a @ a.transpose(-1, -2) / math.sqrt(a.shape[-1])
            rt = c @ c.transpose(-1, -2) / math.sqrt(c.shape[-1])
            rs, rt = match_heads(rs, rt)
            h = rs.shape[1]
            pairs.append((rs[0], rt[0]))
        return self._row_kl(pairs, h)

    def soft_ce(self, T):
        rows = self.rows()
        total = 0.0
        for s, t, _ in rows:
            total = total - (softmax_last(t / T) * log_softmax_last(s / T)).sum()
        if self.head == "qa":
            return total / len(rows)
        return total / (len(rows) * rows[0][0].shape[0])

    def kl(self, T):
        rows = self.rows()
        total = 0.0
        for s, t, _ in rows:
            total = total + kl_rows(log_softmax_last(t / T), log_softmax_last(s / T))
        return T * T * total / len(rows)

    def logit_mse(self, T):
        rows = self.rows()
        total = 0.0
        for s, t, _ in rows:
            total = total + ((s - t) ** 2).sum()
        if self.head == "qa":
            return total / (len(rows) * self.S)  # 2B x S: padded positions differ by 0
        return total / (len(rows) * rows[0][0].shape[0])

    def hard_ce(self, T):
        total, count = 0.0, 0
        for s, _, gold in self.rows():
            if gold == -100:
                continue
            total = total - log_softmax_last(s)[gold]
            count += 1
        return total / max(count, 1)


# ------------------------------------------------------------------------------------------


def run_job(job, config, arrays, job_tensors, batch, dtype, result, metadata):
    """One objective on fresh leaves: loss, terms, gradients and optionally one AdamW step."""
    prefix = job["name"] + "." if job.get("name") else ""
    objective = job["objective"]
    set_name = job.get("set")
    targets, extras = {}, {}
    if set_name:
        for key, arr in job_tensors.items():
            if key.startswith(set_name + "."):
                rest = key[len(set_name) + 1 :]
                (extras if rest.startswith("distill.") else targets)[rest] = arr
    params = leaves({**arrays, **extras}, dtype)
    targets = {k: torch.tensor(a, dtype=dtype) for k, a in targets.items()}
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    out = forward(config, params, ids, mask, types)
    lengths = [int(n) for n in mask.sum(dim=1)]
    for b, n in enumerate(lengths):  # real tokens first, padding after
        assert int(mask[b, :n].sum()) == n, "padding must follow the real tokens"
    kind = head_kind(config, params)

    if objective == "classification":
        loss = cross_entropy(out["logits"], torch.tensor(batch["labels"], dtype=torch.long))
    elif objective == "regression":
        y = torch.tensor(batch["float_labels"], dtype=dtype)
        loss = ((out["logits"].reshape(-1) - y) ** 2).mean()
    elif objective == "token_classification":
        labels = torch.tensor(batch["token_labels"], dtype=torch.long).reshape(-1)
        C = out["token_logits"].shape[-1]
        loss = cross_entropy(out["token_logits"].reshape(-1, C), labels)
    elif objective == "span":
        total = 0.0
        for k, key in ((0, "start_positions"), (1, "end_positions")):
            for b, n in enumerate(lengths):
                total = total - log_softmax_last(out["span_logits"][b, :n, k])[batch[key][b]]
        loss = total / (2 * len(lengths))
    elif objective == "mlm":
        labels = torch.tensor(batch["mlm_labels"], dtype=torch.long).reshape(-1)
        V = out["mlm_logits"].shape[-1]
        loss = cross_entropy(out["mlm_logits"].reshape(-1, V), labels)
    elif objective == "distillation":
        head = {"sequence": "sequence", "token": "token"}.get(kind)
        if "qa_outputs.weight" in params and kind != "token":
            head = "qa"
        d = Distill(job, out, params, targets, lengths, head, batch, ids.shape[1])
        loss = 0.0
        for term in job["terms"]:
            value = getattr(d, term["name"])(float(term.get("temperature", 1.0)))
            result[f"{prefix}term.{term['name']}"] = value.detach().clone()
            loss = loss + float(term.get("weight", 1.0)) * value
    else:
        raise ValueError(f"unknown objective {objective}")

    loss.backward()
    result[f"{prefix}loss"] = loss.detach().clone()
    with_grad = {n: p for n, p in params.items() if p.grad is not None}
    metadata[f"{prefix}no_grad"] = ",".join(sorted(n for n in params if n not in with_grad))
    for name, p in with_grad.items():
        result[f"{prefix}grad.{name}"] = p.grad.clone()
    result[f"{prefix}grad_norm"] = torch.sqrt(sum((p.grad**2).sum() for p in with_grad.values()))

    hp = job.get("adamw")
    if hp is not None:
        names = sorted(params)
        groups = [
            {
                "params": [params[n] for n in names if not no_decay(n)],
                "weight_decay": hp["weight_decay"],
            },
            {"params": [params[n] for n in names if no_decay(n)], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"])
        if hp.get("max_grad_norm") is not None:
            torch.nn.utils.clip_grad_norm_(list(with_grad.values()), hp["max_grad_norm"])
        opt.step()
        for name in names:
            result[f"{prefix}updated.{name}"] = params[name].detach().clone()


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    ckpt_dir, inputs_path, out_path = argv[1:]
    with open(inputs_path) as f:
        inputs = json.load(f)
    dtype = {"float64": torch.float64, "float32": torch.float32}[inputs.get("dtype", "float64")]
    config, arrays = load_checkpoint(ckpt_dir)

    input_ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    B, S = input_ids.shape
    attention_mask = torch.tensor(inputs.get("attention_mask") or [[1] * S] * B, dtype=torch.long)
    token_type_ids = torch.tensor(inputs.get("token_type_ids") or [[0] * S] * B, dtype=torch.long)
    batch = dict(inputs)
    batch.update(
        {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    )

    with torch.no_grad():
        out = forward(config, leaves(arrays, dtype), input_ids, attention_mask, token_type_ids)
    result = {}
    for i, h in enumerate(out["hidden_states"]):
        result[f"hidden_states.{i}"] = h
    for i, s in enumerate(out["attention_scores"]):
        result[f"attention_scores.{i}"] = s
    for i, v in enumerate(out["values"]):
        result[f"values.{i}"] = v
    legacy = "jobs" not in inputs
    for key in ("pooled", "logits", "token_logits", "span_logits", "mlm_logits"):
        if key in out and (key != "mlm_logits" or not legacy or inputs.get("mlm")):
            result[key] = out[key]
    metadata = {"format": "pt", "producer": "tests/reference/bert_torch.py"}

    if legacy:
        if inputs.get("labels") is not None and "logits" in out:
            job = {"objective": "classification", "adamw": inputs.get("adamw")}
            run_job(job, config, arrays, {}, batch, dtype, result, metadata)
    else:
        job_tensors = read_safetensors(inputs["tensors"]) if inputs.get("tensors") else {}
        names = [j["name"] for j in inputs["jobs"]]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError("every job needs a distinct name")
        for job in inputs["jobs"]:
            run_job(job, config, arrays, job_tensors, batch, dtype, result, metadata)

    write_safetensors(out_path, result, dtype, metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
