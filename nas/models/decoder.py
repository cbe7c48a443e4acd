"""The decoder family: Llama-architecture LMs (Llama, Qwen2, Mistral): shape, physical pruning,
importance mask sites and export.

The five axes on a pre-norm decoder with grouped-query attention (GQA) and a gated FFN:

| axis    | sliced                                                                              |
|---------|-------------------------------------------------------------------------------------|
| depth   | model.layers; each kept attention's layer_idx (its KV-cache slot) renumbered         |
| heads   | whole key/value groups (K/V rows) and query heads per group (Q rows, o_proj columns) |
| ffn     | gate_proj and up_proj rows, down_proj columns (together)                             |
| hidden  | embed_tokens columns (and the tied lm_head), every projection's hidden side, every   |
|         | RMSNorm weight, the classification `score` head                                      |
| context | max_position_embeddings (rotary positions are computed, there is no table to cut)    |

GQA stays valid: query head j of the base reads key/value head j // group_size. A pruned layer
keeps `kv_heads` whole groups and the same number q of query heads in each, ordered group by
group, so HF's `repeat_kv` (query head i reads kv head i // q) pairs them as in the base.
Removing a key/value group removes its query heads and nothing else.

Importance (higher = kept first), as for encoders (nas.cut.importance):
- query heads, FFN neurons: Fisher information of a mask on each head's slice of o_proj's
  input / each neuron at down_proj's input;
- key/value groups: the sum of their query heads' Fisher scores;
- hidden channels: Fisher information of one mask per residual channel, applied where the
  residual stream is written (the embedding output and every o_proj / down_proj output),
  which is what removing a channel everywhere does in a pre-norm model;
- layers: block influence 1 - cos(layer input, layer output) (ShortGPT).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.models.family import Family, MaskSites
from nas.models.folder import RemoteCode, record_cut, save_hf_folder
from nas.models.slicing import head_rows, keep_top, select_units, shrink_embedding, shrink_linear, shrink_norm
from nas.spec import BaseShape, SubnetSpec

DECODER_TYPES = ("llama", "qwen2", "mistral")


def is_decoder_config(config: Any) -> bool:
    return getattr(config, "model_type", None) in DECODER_TYPES


def is_decoder(model: nn.Module) -> bool:
    return is_decoder_config(getattr(model, "config", None))


def head_dim(config: Any) -> int:
    return int(getattr(config, "nas_head_size", None) or getattr(config, "head_dim", None)
               or config.hidden_size // config.num_attention_heads)


def decoder_base_shape(config: Any) -> BaseShape:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    return BaseShape(
        num_layers=int(config.num_hidden_layers),
        num_heads=heads,
        head_size=head_dim(config),
        hidden_size=int(config.hidden_size),
        ffn_size=int(config.intermediate_size),
        max_positions=int(config.max_position_embeddings),
        num_kv_heads=kv,
        vocab_size=int(config.vocab_size) if getattr(config, "vocab_size", None) else None,
    )


def backbone(model: nn.Module) -> nn.Module:
    """The LlamaModel inside a *ForCausalLM / *ForSequenceClassification (or the model itself)."""
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


def head_linears(model: nn.Module) -> list[nn.Linear]:
    """Task heads reading the hidden state: lm_head (causal LM) or score (sequence classification)."""
    return [m for m in (getattr(model, "lm_head", None), getattr(model, "score", None)) if isinstance(m, nn.Linear)]


def is_tied(model: nn.Module) -> bool:
    head = getattr(model, "lm_head", None)
    return head is not None and head.weight is backbone(model).embed_tokens.weight


# ---------------------------------------------------------------------------- per-layer attention variants


ATTENTION_KINDS = ("full", "linear", "none")


class LinearAttention(nn.Module):
    """A layer's attention replaced by one linear map of its normed input (llama.cpp deci's "linear
    attention": `n_head > 0` with `n_head_kv == 0`, only the output projection), fitted by nas.cut.heal."""

    kind = "linear"

    def __init__(self, hidden: int, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.o_proj.weight)  # a layer that adds nothing until it is fitted

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.o_proj(hidden_states), None


class NoAttention(nn.Module):
    """A layer without attention (deci's `n_head == 0`): its FFN reads the stream as it arrives."""

    kind = "none"

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


def attention_kind(layer: nn.Module) -> str:
    """full | linear | none: what a decoder layer's attention is."""
    return str(getattr(layer.self_attn, "kind", "full"))


def causal_inputs(body: nn.Module, hidden: torch.Tensor) -> tuple[Any, Any]:
    """(causal mask, rotary position embeddings) a decoder layer needs for full blocks `hidden` (b, t, d)
    run on their own (no padding, no cache), as the model's forward builds them."""
    from transformers.masking_utils import create_causal_mask

    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    mask = create_causal_mask(config=body.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None,
                              position_ids=positions)
    return mask, body.rotary_emb(hidden, position_ids=positions)


# ---------------------------------------------------------------------------- which units to keep


def group_scores(head_scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(H,) query-head scores -> (H / group_size,) key/value-group scores: the sum over each group."""
    return head_scores.reshape(-1, group_size).sum(-1)  # (G * q,) -> (G, q) -> (G,)


def select_heads(head_scores: torch.Tensor | None, *, kv_heads: int, heads: int, shape: BaseShape
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept key/value groups, kept query heads ordered group by group) of one layer.

    Groups are ranked by their summed query-head scores; within each kept group the top
    heads // kv_heads query heads are kept. No scores: the first groups, the first heads of each.
    """

    group, q = shape.group_size, heads // kv_heads
    n_kv = shape.num_kv_heads or shape.num_heads
    if head_scores is None:
        kv_idx = torch.arange(kv_heads)
        within = [torch.arange(q)] * kv_heads
    else:
        kv_idx = keep_top(group_scores(head_scores, group), kv_heads) if kv_heads < n_kv else torch.arange(n_kv)
        within = [keep_top(head_scores[g * group:(g + 1) * group], q) if q < group else torch.arange(group)
                  for g in kv_idx.tolist()]
    q_idx = torch.cat([g * group + w for g, w in zip(kv_idx.tolist(), within, strict=True)])
    return kv_idx, q_idx


# ---------------------------------------------------------------------------- pruning


def prune_decoder(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """A new decoder cut down to `spec` (the base is untouched); `scores=None` keeps the first k."""

    shape = decoder_base_shape(base.config)
    spec.validate(shape)
    if scores is not None:
        scores.check_fits(shape)
    tied = is_tied(base)
    model = copy.deepcopy(base)
    body = backbone(model)
    hd = shape.head_size
    hidden_idx = select_units(scores, "hidden", None, spec.hidden, shape.hidden_size)
    assert spec.kv_heads is not None  # validate() requires it on a decoder

    body.layers = nn.ModuleList([body.layers[i] for i in spec.layers])
    for new_pos, (old, heads, kv, ffn) in enumerate(zip(spec.layers, spec.heads, spec.kv_heads, spec.ffn,
                                                         strict=True)):
        layer = body.layers[new_pos]
        att, mlp = layer.self_attn, layer.mlp
        kind = spec.attention(new_pos)
        if kind == "full":
            kv_idx, q_idx = select_heads(None if scores is None else scores.heads[old], kv_heads=kv, heads=heads,
                                         shape=shape)
            q_rows, kv_rows = head_rows(q_idx, hd), head_rows(kv_idx, hd)
            shrink_linear(att.q_proj, out_idx=q_rows, in_idx=hidden_idx)
            shrink_linear(att.k_proj, out_idx=kv_rows, in_idx=hidden_idx)
            shrink_linear(att.v_proj, out_idx=kv_rows, in_idx=hidden_idx)
            shrink_linear(att.o_proj, out_idx=hidden_idx, in_idx=q_rows)
            att.num_key_value_groups = heads // kv
            att.head_dim = hd
            att.layer_idx = new_pos  # its slot in the KV cache
            shrink_norm(layer.input_layernorm, hidden_idx)
        elif kind == "linear":  # fitted by nas.cut.heal; until then it adds nothing
            layer.self_attn = LinearAttention(spec.hidden, new_pos).to(att.o_proj.weight.dtype)
            shrink_norm(layer.input_layernorm, hidden_idx)
        else:  # no attention: no norm in front of it either
            layer.self_attn = NoAttention(new_pos)
            layer.input_layernorm = nn.Identity()
        ffn_idx = select_units(scores, "ffn", old, ffn, shape.ffn_size)
        shrink_linear(mlp.gate_proj, out_idx=ffn_idx, in_idx=hidden_idx)
        shrink_linear(mlp.up_proj, out_idx=ffn_idx, in_idx=hidden_idx)
        shrink_linear(mlp.down_proj, out_idx=hidden_idx, in_idx=ffn_idx)
        shrink_norm(layer.post_attention_layernorm, hidden_idx)

    shrink_embedding(body.embed_tokens, cols=hidden_idx)
    shrink_norm(body.norm, hidden_idx)
    for head in head_linears(model):
        if tied and head is model.lm_head:
            head.weight = body.embed_tokens.weight  # stays tied: one matrix, as in the base
            head.in_features = spec.hidden
        else:
            shrink_linear(head, in_idx=hidden_idx)
    update_config(model.config, spec, shape)
    rotary = getattr(body, "rotary_emb", None)
    if rotary is not None and hasattr(rotary, "max_seq_len_cached"):
        rotary.max_seq_len_cached = spec.context
    return model


def update_config(config: Any, spec: SubnetSpec, base: BaseShape) -> None:
    """Config attributes follow the weights. A uniform shape is a stock config (with head_dim
    given explicitly, as hidden / heads no longer holds); per-layer counts live in nas_* keys."""
    assert spec.kv_heads is not None
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == base.num_layers:
        config.layer_types = [layer_types[i] for i in spec.layers]
    config.num_hidden_layers = len(spec.layers)
    config.hidden_size = spec.hidden
    config.num_attention_heads = max(spec.heads)
    config.num_key_value_heads = max(spec.kv_heads)
    config.intermediate_size = max(spec.ffn)
    config.head_dim = base.head_size
    config.max_position_embeddings = spec.context
    record_cut(config, spec, base, kv_heads=list(spec.kv_heads), attn=spec.attn)


def is_uniform(config: Any) -> bool:
    """True when every layer has the config's head, group and FFN counts: a stock config loads it."""
    heads, kv, ffn = (getattr(config, k, None) for k in ("nas_heads", "nas_kv_heads", "nas_ffn"))
    if heads is None:
        return True
    if set(getattr(config, "nas_attn", None) or ["full"]) != {"full"}:
        return False
    return (set(heads) == {config.num_attention_heads} and set(kv) == {config.num_key_value_heads}
            and set(ffn) == {config.intermediate_size})


# ---------------------------------------------------------------------------- closed forms


def decoder_params(spec: SubnetSpec, *, vocab: int, head_size: int, tied: bool, labels: int | None = None,
                   qkv_bias: bool = False) -> int:
    """Parameters of a Llama-family model of this shape, in closed form (no biases but Qwen2's q/k/v)."""
    assert spec.kv_heads is not None
    d, a = spec.hidden, head_size
    total = vocab * d + d  # embeddings + final RMSNorm
    for i, (h, g, f) in enumerate(zip(spec.heads, spec.kv_heads, spec.ffn, strict=True)):
        kind = spec.attention(i)
        if kind == "full":
            total += d * h * a + 2 * d * g * a + h * a * d + d  # q, k, v, o, the attention's RMSNorm
            if qkv_bias:
                total += h * a + 2 * g * a
        elif kind == "linear":
            total += d * d + d  # one map of the normed stream, its RMSNorm
        total += 3 * d * f + d  # gate, up, down, the FFN's RMSNorm
    if labels is not None:
        total += d * labels  # score (no bias)
    elif not tied:
        total += d * vocab  # lm_head
    return total


# ---------------------------------------------------------------------------- importance


def decoder_mask_sites(model: nn.Module) -> MaskSites:
    """Where nas.cut.importance.compute_scores puts its masks in a decoder (see the module docstring)."""

    body = backbone(model)
    layers = list(body.layers)
    return MaskSites(layers=layers, heads_in=[layer.self_attn.o_proj for layer in layers],
                     ffn_in=[layer.mlp.down_proj for layer in layers],
                     residual_out=[body.embed_tokens,
                                   *(m for layer in layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj))])


REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas_llama.py"


def auto_class(model: Any) -> str:
    return "AutoModelForSequenceClassification" if hasattr(model, "score") else "AutoModelForCausalLM"


SHAPE_KEYS = ("nas_heads", "nas_kv_heads", "nas_ffn", "nas_head_size", "nas_attn")  # dropped by a stock export


def save_decoder_folder(model: Any, tokenizer: Any, out: str | Path, *, context: int) -> dict[str, Any]:
    stock = is_uniform(model.config)
    if not stock and model.config.model_type != "llama":
        raise ValueError(f"per-layer shapes of model_type={model.config.model_type!r} cannot be exported yet; "
                         "search with a uniform space (per_layer: false) or a Llama model")
    cls = "NasLlamaForSequenceClassification" if hasattr(model, "score") else "NasLlamaForCausalLM"
    remote = RemoteCode(REMOTE_CODE, "NasLlamaConfig", cls, auto_class=auto_class(model))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and is_tied(model))}
    healed = healed_bias_state(model, state)  # zeros for the biases a stock config adds (in `state`, in place)
    return save_hf_folder(model, tokenizer, out, context=context, stock=stock, remote=remote, shape_keys=SHAPE_KEYS,
                          state=state, config_extra=healed, name_tokenizer=False)


def healed_bias_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Biases that closed-form healing (nas.cut.heal) gave o_proj / down_proj, in a form stock configs load:
    Llama's `attention_bias` gives every attention projection a bias and `mlp_bias` every FFN projection,
    so the projections without one get zeros (in `state`, in place). Returns the config flags to set."""
    layers = list(backbone(model).layers)
    prefix = next(k for k in state if k.endswith("layers.0.mlp.down_proj.weight")).rsplit("layers.0.", 1)[0]
    groups = {"attention_bias": ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
              "mlp_bias": ("mlp", ("gate_proj", "up_proj", "down_proj"))}
    flags: dict[str, bool] = {}
    for flag, (part, names) in groups.items():
        # linear / no attention: the remote code builds those without biases
        owners = [(i, getattr(layer, part)) for i, layer in enumerate(layers)
                  if part == "mlp" or attention_kind(layer) == "full"]
        if not any(getattr(owner, name).bias is not None for _, owner in owners for name in names):
            continue
        flags[flag] = True
        for i, owner in owners:
            for name in names:
                linear = getattr(owner, name)
                state.setdefault(f"{prefix}layers.{i}.{part}.{name}.bias",
                                 torch.zeros(linear.out_features, dtype=linear.weight.dtype))
    return flags


class DecoderFamily(Family):
    name = "decoder"
    model_types = DECODER_TYPES
    causal_lm = True
    recovery = False  # not a BERT-style encoder; prune.recovery allows none: its cuts are healed instead (heals)
    heals = True  # nas.cut.heal refits o_proj / down_proj layer by layer
    gguf_arch = "llama"  # llama.cpp's llama graph; per-layer shapes as deci (nas.deploy.gguf)

    def base_shape(self, config: Any) -> BaseShape:
        return decoder_base_shape(config)

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        return prune_decoder(base, spec, scores)

    def mask_sites(self, model: nn.Module) -> MaskSites:
        return decoder_mask_sites(model)

    def classifier_config(self, config: Any, pad_token_id: Any) -> None:
        # a decoder classifies from its last real token: it must know the pad id
        if config.pad_token_id is None:
            config.pad_token_id = pad_token_id()

    def save_folder(self, model: nn.Module, tokenizer: Any, out: Path, *, context: int) -> dict[str, Any]:
        return save_decoder_folder(model, tokenizer, out, context=context)

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return (auto_class(model), "modeling_nas_llama.py",
                "every layer has its own query heads, key/value groups and FFN width")


DECODER = DecoderFamily()
