#!/usr/bin/env python3
"""Independent PyTorch reference for tinystill's BERT (tests only).

Written from the math with plain torch ops (no `transformers`, no `safetensors` package):
reads a Hugging Face BERT checkpoint directory (config.json + model.safetensors, parsed by
hand), runs the forward pass with Hugging Face `BertModel` semantics in eval mode (no dropout),
and, when the model has a classifier and labels are given, the mean cross-entropy loss, its
gradient with respect to every parameter (autograd), and the parameters after one
`torch.optim.AdamW` step (optionally after `clip_grad_norm_`).

Usage:
    python3 bert_torch.py CHECKPOINT_DIR INPUTS_JSON OUTPUT_FILE

INPUTS_JSON:
    {
      "input_ids": [[int]], "attention_mask": [[0|1]], "token_type_ids": [[int]],
      "labels": [int],                      # optional; needed for loss / grads / AdamW
      "dtype": "float64" | "float32",       # compute dtype (default float64)
      "mlm": true,                          # compute MLM logits if the model has the head
      "adamw": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01,
                "max_grad_norm": 1.0}       # optional; max_grad_norm null = no clipping
    }

OUTPUT_FILE is a safetensors file (F64 for float64, F32 for float32) holding:
    hidden_states.{i}      [B, S, H], i = 0 (embedding output) .. L
    attention_scores.{l}   [B, heads, S, S], pre-softmax, with (1 - mask) * -10000 added
    pooled                 [B, H]
    logits                 [B, C]            (classifier present)
    mlm_logits             [B, S, V]         (MLM head present and "mlm" true)
    loss                   []                (mean cross-entropy on labels)
    grad.{name}            d loss / d param, for every parameter that gets a gradient
    grad_norm              []                global L2 norm of those gradients (before clipping)
    updated.{name}         every parameter after one AdamW step
Parameter names are the base-model names (no `bert.` prefix). `__metadata__.no_grad` lists
(comma-separated) the parameters the loss does not reach (no `grad.` entry; AdamW skips them).
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

BASE_PREFIXES = ("embeddings.", "encoder.", "pooler.")


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


def load_checkpoint(directory, dtype):
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
    params = {
        n: torch.tensor(a, dtype=dtype, requires_grad=True)
        for n, a in params.items()
        if not n.startswith("cls.seq_relationship.")
    }
    return config, params


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


def forward(config, params, input_ids, attention_mask, token_type_ids, want_mlm):
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

    additive = ((1.0 - attention_mask.to(dtype)) * -10000.0).view(B, 1, 1, S)
    hidden_states = [h]
    scores_all = []
    for layer in range(L):
        p = f"encoder.layer.{layer}."

        def heads(x):
            return x.view(B, S, nh, d).permute(0, 2, 1, 3)  # head h = features h*d..(h+1)*d

        q = heads(linear(h, params, p + "attention.self.query"))
        k = heads(linear(h, params, p + "attention.self.key"))
        v = heads(linear(h, params, p + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + additive
        scores_all.append(scores)
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

    out = {"hidden_states": hidden_states, "attention_scores": scores_all}
    out["pooled"] = torch.tanh(linear(h[:, 0, :], params, "pooler.dense"))
    if "classifier.weight" in params:
        out["logits"] = linear(out["pooled"], params, "classifier")
    if want_mlm and "cls.predictions.transform.dense.weight" in params:
        t = act(linear(h, params, "cls.predictions.transform.dense"))
        t = layer_norm(t, params, "cls.predictions.transform.LayerNorm", eps)
        decoder = params["embeddings.word_embeddings.weight"]  # tied
        out["mlm_logits"] = t @ decoder.t() + params["cls.predictions.bias"]
    return out


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label]."""
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = log_probs.gather(1, labels.view(-1, 1)).view(-1)
    return -picked.mean()


def no_decay(name):
    return name.endswith(".bias") or "LayerNorm." in name


# ------------------------------------------------------------------------------------------


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    ckpt_dir, inputs_path, out_path = argv[1:]
    with open(inputs_path) as f:
        inputs = json.load(f)
    dtype = {"float64": torch.float64, "float32": torch.float32}[inputs.get("dtype", "float64")]
    config, params = load_checkpoint(ckpt_dir, dtype)

    input_ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    attention_mask = torch.tensor(
        inputs.get("attention_mask") or [[1] * input_ids.shape[1]] * input_ids.shape[0],
        dtype=torch.long,
    )
    token_type_ids = torch.tensor(
        inputs.get("token_type_ids") or [[0] * input_ids.shape[1]] * input_ids.shape[0],
        dtype=torch.long,
    )
    out = forward(
        config, params, input_ids, attention_mask, token_type_ids, bool(inputs.get("mlm"))
    )

    result = {}
    for i, h in enumerate(out["hidden_states"]):
        result[f"hidden_states.{i}"] = h
    for i, s in enumerate(out["attention_scores"]):
        result[f"attention_scores.{i}"] = s
    for key in ("pooled", "logits", "mlm_logits"):
        if key in out:
            result[key] = out[key]
    metadata = {"format": "pt", "producer": "tests/reference/bert_torch.py"}

    labels = inputs.get("labels")
    if labels is not None and "logits" in out:
        loss = cross_entropy(out["logits"], torch.tensor(labels, dtype=torch.long))
        loss.backward()
        result["loss"] = loss
        with_grad = {n: p for n, p in params.items() if p.grad is not None}
        metadata["no_grad"] = ",".join(sorted(n for n in params if n not in with_grad))
        for name, p in with_grad.items():
            result[f"grad.{name}"] = p.grad.clone()
        result["grad_norm"] = torch.sqrt(sum((p.grad**2).sum() for p in with_grad.values()))

        hp = inputs.get("adamw")
        if hp is not None:
            names = sorted(params)
            groups = [
                {
                    "params": [params[n] for n in names if not no_decay(n)],
                    "weight_decay": hp["weight_decay"],
                },
                {"params": [params[n] for n in names if no_decay(n)], "weight_decay": 0.0},
            ]
            opt = torch.optim.AdamW(
                groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"]
            )
            if hp.get("max_grad_norm") is not None:
                torch.nn.utils.clip_grad_norm_(list(with_grad.values()), hp["max_grad_norm"])
            opt.step()
            for name in names:
                result[f"updated.{name}"] = params[name]

    write_safetensors(out_path, result, dtype, metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
