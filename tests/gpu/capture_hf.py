"""Real activations for tests/gpu/bench_flex_ref.py: the post-RoPE q, k and
v of chosen layers of a model loaded by transformers (the default model from
its GGUF, as bench/gpu_e2e.py loads it), from ONE forward of natural text.

How: an attention function registered with transformers' AttentionInterface
(4.57 and 5.x have it, 4.50 not) under the name "lacuna_capture", set as
the model's attention implementation, receives every layer's query (1,
heads, L, d), key and value (1, kv_heads, L, d) after RoPE, keeps those of
the chosen layers as (L, heads, d), and returns torch SDPA's causal
attention on them (K and V expanded to every head, the layer's scaling) in
transformers' layout (1, L, heads, d). Where transformers has masking_utils
(4.57 and 5.x, not 4.50) the name is registered with AttentionMaskInterface
too, as sdpa's mask: for one unpadded sequence that is no mask at all. An
older 4.x (no AttentionMaskInterface, where any name but "sdpa" gets a
dense L x L mask, 32 GB at 128K; 4.48-4.50 also without AttentionInterface,
a plain dict) gets the function under "sdpa" itself for the forward, the
original put back after. The forward is the decoder alone (no LM head: 128K
x 49K logits are never made) and stops once the last chosen layer is
captured. Shorter lengths are prefixes of the same capture: attention is
causal, so a prefix's q, k, v are exactly those of a forward over the
prefix alone.

The text: the repository's documents and C comments as of one commit
(bench/accuracy/corpus.py --frozen), tokenised once and repeated (with a paragraph break) when shorter than the
longest length; the info says where the repetition starts.

load_real reads q, k, v captured elsewhere (bench_flex_ref.py --real FILE).
"""
import importlib.util
import os

NAME = "lacuna_capture"


class _Captured(Exception):
    """Raised by the attention function once the last chosen layer is kept:
    the rest of the forward is not needed."""


def corpus_ids(tokenizer, n):
    """n token ids of the repository's text (corpus.py's frozen snapshot), and
    where a repetition starts."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "bench", "accuracy", "corpus.py")
    spec = importlib.util.spec_from_file_location("lacuna_corpus", path)
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    text = corpus.text(0, frozen=True)
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    again = tokenizer("\n\n" + text, add_special_tokens=False)["input_ids"]
    ids = list(base)
    while len(ids) < n:
        ids += again
    return ids[:n], {"text": "bench/accuracy/corpus.py --frozen (docs and C comments as of 4983e68)",
                     "base_tokens": len(base), "repeated_from": len(base) if n > len(base) else None}


def load_gguf(path, device, dtype):
    """transformers' model and tokenizer from a GGUF file (dequantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    kw = dict(gguf_file=f, attn_implementation="sdpa")
    try:  # transformers 5 names it dtype; 4.x torch_dtype
        m = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, **kw)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype, **kw)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    return m.to(device=device, dtype=dtype).eval(), tok


def _install(fn):
    """Registers fn; returns (the implementation name to set, undo)."""
    import transformers
    try:
        from transformers import AttentionInterface
        table = AttentionInterface._global_mapping
    except ImportError:  # 4.48-4.50: a plain dict of the same functions
        AttentionInterface = None
        table = getattr(transformers.modeling_utils, "ALL_ATTENTION_FUNCTIONS", None)
        if not isinstance(table, dict):
            raise RuntimeError(f"transformers {transformers.__version__}: no attention function table (4.48+)")
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        AttentionMaskInterface = None
    if AttentionMaskInterface is not None and AttentionInterface is not None:
        AttentionInterface.register(NAME, fn)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        return NAME, lambda: None
    old = table["sdpa"]
    table["sdpa"] = fn
    return "sdpa", lambda: table.__setitem__("sdpa", old)


def capture(model, ids, layers):
    """One forward of ids (1, L) through model's decoder; returns {layer: (q,
    k, v)} with q (L, heads, d), k and v (L, kv_heads, d) in the model's
    dtype on its device, and an info dict."""
    import torch
    import torch.nn.functional as F
    want, kept, calls = set(layers), {}, [0]

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        li = getattr(module, "layer_idx", None)
        li = calls[0] if li is None else li
        calls[0] += 1
        if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
            raise RuntimeError(f"capture: one sequence without a cache expected, got q {tuple(query.shape)} "
                               f"k {tuple(key.shape)}")
        if li in want:
            kept[li] = tuple(x[0].transpose(0, 1).contiguous() for x in (query, key, value))
            if len(kept) == len(want):
                raise _Captured()
        # one unpadded sequence: causal attention is exact, whatever mask transformers made. K and V
        # expanded to every query head (transformers' repeat_kv order), so that no backend is ruled
        # out for GQA and the math fallback (128K x 128K scores per head) is never taken
        g = query.shape[1] // key.shape[1]
        o = F.scaled_dot_product_attention(query, key.repeat_interleave(g, 1), value.repeat_interleave(g, 1),
                                           is_causal=True, scale=scaling)
        return o.transpose(1, 2).contiguous(), None

    impl, undo = _install(attend)
    cfg = model.config
    old_impl = cfg._attn_implementation
    cfg._attn_implementation = impl
    dec = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    n_layers = cfg.num_hidden_layers
    bad = [li for li in want if not 0 <= li < n_layers]
    try:
        if bad:
            raise ValueError(f"layers {bad} outside 0..{n_layers - 1}")
        with torch.inference_mode():
            try:
                dec(input_ids=ids, use_cache=False)
            except _Captured:
                pass
    finally:
        cfg._attn_implementation = old_impl
        undo()
    if len(kept) != len(want):
        raise RuntimeError(f"capture: layers {sorted(want - set(kept))} were not seen ({calls[0]} attention calls)")
    import transformers
    return kept, {"transformers": transformers.__version__, "implementation": impl, "attention_calls": calls[0],
                  "layers": sorted(want), "length": ids.shape[1]}


def load_real(path, layer):
    """q, k, v from FILE.pt (a dict with q, k, v or a tuple), FILE.npz, or a
    directory with q.npy, k.npy, v.npy; (L, heads, d), or with a leading
    batch of 1 or a leading layer axis (--real-layer picks one)."""
    import torch
    if os.path.isdir(path):
        import numpy as np
        t = [torch.from_numpy(np.load(os.path.join(path, n + ".npy"))) for n in "qkv"]
    elif path.endswith(".npz"):
        import numpy as np
        z = np.load(path)
        t = [torch.from_numpy(z[n]) for n in "qkv"]
    else:
        obj = torch.load(path, map_location="cpu")
        t = [obj[n] for n in "qkv"] if isinstance(obj, dict) else list(obj)
    out = []
    for x in t:
        if x.dim() == 4:
            x = x[0] if x.shape[0] == 1 else x[layer]
        if x.dim() != 3:
            raise ValueError(f"{path}: expected (L, heads, d) tensors, got {tuple(x.shape)}")
        out.append(x.to(torch.bfloat16).contiguous())
    q, k, v = out
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{path}: inconsistent shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    return q, k, v


def check_tiny(check, torch):
    """The dry run's checks of capture() on a tiny random Llama (6 q / 2 kv
    heads like SmolLM2's 9 / 3, d 16, 4 layers, f32 on the CPU): shapes;
    causal attention from the captured q, k, v equals what the unmodified
    model (transformers' own sdpa) feeds its o_proj at that layer, so they
    are the post-RoPE tensors and the layers before ran faithfully; a prefix
    captured alone equals the prefix of the long capture; the forward
    stopped after the last chosen layer."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      rope_theta=10000.0)
    torch.manual_seed(0)
    try:
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except TypeError:
        cfg._attn_implementation = "sdpa"
        m = AutoModelForCausalLM.from_config(cfg)
    m = m.float().eval()
    L, layers = 384, [1, 2]
    ids = torch.randint(0, 256, (1, L), generator=torch.Generator().manual_seed(3))
    seen = {}
    hooks = [m.get_decoder().layers[li].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args, li=li: seen.__setitem__(li, args[0][0].detach().clone())) for li in layers]
    with torch.inference_mode():
        m.get_decoder()(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    kept, info = capture(m, ids, layers)
    check(info["attention_calls"] == max(layers) + 1, f"capture stopped after layer {max(layers)} "
          f"({info['attention_calls']} attention calls; transformers {info['transformers']}, {info['implementation']})")
    for li in layers:
        q, k, v = kept[li]
        check(q.shape == (L, 6, 16) and k.shape == (L, 2, 16) and v.shape == (L, 2, 16),
              f"capture layer {li}: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
        kr, vr = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
        s = torch.einsum("qhd,khd->hqk", q, kr) * 16 ** -0.5
        s.masked_fill_(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        o = torch.einsum("hqk,khd->qhd", s.softmax(-1), vr).reshape(L, -1)
        err = float((o - seen[li]).abs().max())
        check(err < 1e-4, f"capture layer {li}: attention of the captured q, k, v = the model's own ({err:.1e})")
    half, _ = capture(m, ids[:, :L // 2], layers)
    d = max(float((a[:L // 2] - b).abs().max()) for li in layers for a, b in zip(kept[li], half[li]))
    check(d < 1e-5, f"capture: a prefix alone = the prefix of the long capture ({d:.1e})")
    again = {}
    hooks = [m.get_decoder().layers[li].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args, li=li: again.__setitem__(li, args[0][0].detach().clone())) for li in layers]
    with torch.inference_mode():
        m.get_decoder()(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    check(m.config._attn_implementation == "sdpa" and all(torch.equal(again[li], seen[li]) for li in layers),
          "capture: the model's own attention put back (the same outputs as before, bitwise)")
