"""Our VideoMAEv2 teacher vs an independent implementation: Hugging Face ``VideoMAEModel``.

Random weights in the official VideoMAEv2 key layout go into both: directly into ours,
and into transformers' model after the key mapping of its VideoMAE conversion script
(``convert_videomae_to_pytorch.py``: ``blocks.N`` -> ``encoder.layer.N``, ``qkv`` split into
query/key/value, ``attn.q_bias`` -> ``attention.attention.q_bias``, which transformers >= 5
renames to ``attention.attention.query.bias``). Every parameter of the reference is checked
to hold exactly the value we gave it, so a reference that silently ignores weights (e.g.
q/v biases left at zero) fails here instead of agreeing with a bug.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salt_vla.models.teacher import ARCHS, Teacher, TeacherSpec, load_teacher, sinusoid_table

transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (the reference; pip install .[test])"
)

TOL = 1e-4  # max abs difference allowed, fp32
SPEC = TeacherSpec(arch="vit_tiny", num_frames=6, img_size=48, target_norm=False)  # 27 tokens


def official_to_hf(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Official fine-tune keys -> ``VideoMAEModel`` keys, as the conversion script maps them."""
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        parts = key.split(".")
        if key.startswith("blocks.") and parts[2:] == ["attn", "qkv", "weight"]:
            pre = f"encoder.layer.{parts[1]}.attention.attention"
            out[f"{pre}.query.weight"] = val[:dim]
            out[f"{pre}.key.weight"] = val[dim : 2 * dim]
            out[f"{pre}.value.weight"] = val[2 * dim :]
            continue
        name = key.replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
        name = name.replace("blocks.", "encoder.layer.")
        name = name.replace("attn.proj", "attention.output.dense")
        name = name.replace("attn.q_bias", "attention.attention.q_bias")
        name = name.replace("attn.v_bias", "attention.attention.v_bias")
        name = name.replace("norm1", "layernorm_before").replace("norm2", "layernorm_after")
        name = name.replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
        out[name] = val
    return out


def adapt_bias_names(hf_state: dict[str, torch.Tensor], ref_keys: set[str]) -> dict:
    """transformers >= 5 holds q/v biases as ``query.bias``/``value.bias`` (its own
    checkpoint loader renames them); older versions as ``q_bias``/``v_bias`` parameters."""
    if any(k.endswith("attention.attention.q_bias") for k in ref_keys):
        return hf_state
    return {
        k.replace("attention.attention.q_bias", "attention.attention.query.bias").replace(
            "attention.attention.v_bias", "attention.attention.value.bias"
        ): v
        for k, v in hf_state.items()
    }


def build_reference(teacher: Teacher):
    a = teacher.arch
    s = teacher.spec
    config = transformers.VideoMAEConfig(
        image_size=s.img_size,
        patch_size=s.patch,
        num_channels=3,
        num_frames=s.num_frames,
        tubelet_size=s.tubelet,
        hidden_size=a.dim,
        num_hidden_layers=a.depth,
        num_attention_heads=a.heads,
        intermediate_size=a.mlp_hidden,
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # VideoMAEv2's; transformers defaults to 1e-12
        qkv_bias=True,
        use_mean_pooling=True,  # fine-tune layout: no final norm on the tokens
        attn_implementation="eager",  # ours uses SDPA: compare against plain matmul-softmax
    )
    ref = transformers.VideoMAEModel(config).eval()
    assert ref.layernorm is None, "reference applies a final norm; compare the wrong thing"
    ref_state = ref.state_dict()
    hf = adapt_bias_names(official_to_hf(teacher.official_state_dict(), a.dim), set(ref_state))
    result = ref.load_state_dict(hf, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, (
        f"reference ignored weights: missing {result.missing_keys}, "
        f"unexpected {result.unexpected_keys}"
    )
    # Loaded values, not just names: every reference parameter must hold what we gave it.
    loaded = ref.state_dict()
    wrong = [k for k in hf if not torch.equal(loaded[k], hf[k])]
    assert not wrong, f"reference holds different values than loaded for {wrong}"
    for i, layer in enumerate(ref.encoder.layer):
        att = layer.attention.attention
        q_bias = getattr(att, "q_bias", None)
        q_bias = att.query.bias if q_bias is None else q_bias
        v_bias = getattr(att, "v_bias", None)
        v_bias = att.value.bias if v_bias is None else v_bias
        blk = teacher.blocks[i].attn
        assert q_bias is not None and torch.equal(q_bias, blk.q_bias), f"layer {i} q_bias lost"
        assert v_bias is not None and torch.equal(v_bias, blk.v_bias), f"layer {i} v_bias lost"
        assert att.key.bias is None or not att.key.bias.any(), f"layer {i} has a key bias"
    return ref


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = load_teacher("random:vit_tiny:3", SPEC)
    ref = build_reference(teacher)
    x = torch.randn(2, 3, SPEC.num_frames, SPEC.img_size, SPEC.img_size)
    with torch.no_grad():
        out = ref(pixel_values=x.permute(0, 2, 1, 3, 4), output_hidden_states=True)
    return teacher, ref, x, out


def test_position_table_matches_reference():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    ours = sinusoid_table(27, 192)
    theirs = get_sinusoid_encoding_table(27, 192)[0]
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours - theirs).abs().max()


def test_last_layer_matches_reference(setup):
    teacher, _, x, out = setup
    ours = teacher.targets(x)
    theirs = out.last_hidden_state
    assert ours.shape == theirs.shape == (2, teacher.grid.num_tokens, ARCHS["vit_tiny"].dim)
    err = (ours - theirs).abs().max().item()
    print(f"\nteacher vs transformers VideoMAEModel, last block: max abs diff {err:.3g}")
    assert err <= TOL, f"last block differs from the reference by {err:.3g} > {TOL}"


def test_embeddings_and_every_layer_match_reference(setup):
    teacher, _, x, out = setup
    hs = out.hidden_states
    assert len(hs) == teacher.depth + 1, "hidden_states is not (embeddings, block 0..N-1)"
    assert torch.equal(hs[-1], out.last_hidden_state)
    emb = teacher.patch_embed(x) + teacher.pos_embed
    err = (emb - hs[0]).abs().max().item()
    assert err <= TOL, f"patch + position embedding differs from the reference by {err:.3g}"
    for layer in range(teacher.depth):
        sub = load_teacher("random:vit_tiny:3", TeacherSpec(**{**SPEC.to_dict(), "layer": layer}))
        err = (sub.targets(x) - hs[layer + 1]).abs().max().item()
        print(f"block {layer}: max abs diff {err:.3g}")
        assert err <= TOL, f"block {layer} differs from the reference by {err:.3g} > {TOL}"


def test_target_norm_is_affine_free_layer_norm_of_reference(setup):
    teacher, _, x, out = setup
    normed = load_teacher(
        "random:vit_tiny:3", TeacherSpec(**{**SPEC.to_dict(), "layer": -2, "target_norm": True})
    )
    theirs = F.layer_norm(out.hidden_states[-2], (teacher.dim,))
    err = (normed.targets(x) - theirs).abs().max().item()
    assert err <= TOL, f"normalised block -2 differs from the reference by {err:.3g}"


@pytest.mark.parametrize("param", ["q_bias", "v_bias"])
def test_comparison_detects_a_dropped_bias(setup, param):
    """The check can fail: a teacher whose block-0 ``param`` is zeroed must disagree."""
    teacher, _, x, out = setup
    broken = load_teacher("random:vit_tiny:3", SPEC)
    with torch.no_grad():
        getattr(broken.blocks[0].attn, param).zero_()
    err = (broken.targets(x) - out.last_hidden_state).abs().max().item()
    assert err > 100 * TOL, f"zeroing {param} changed the output by only {err:.3g}"
