"""The cut text pass (tca.text) against open_clip's encode_text at the full context, for the
real ViT-B/32, B/16 and L/14 text towers (random weights), the fallback for towers where the
cut is not exact, and the per-label embedding cache."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CustomTextCLIP

import tca
from tca import text
from tca.prompts import TEMPLATES


def _long_label(tokenizer, template: str, n_tokens: int) -> str:
    """A label whose prompt through ``template`` is exactly ``n_tokens`` tokens (with start
    and end tokens)."""
    words: list[str] = []
    while len(tokenizer.encode(template.format(" ".join(words + ["zebra"])))) + 2 <= n_tokens:
        words.append("zebra")
    label = " ".join(words)
    assert len(tokenizer.encode(template.format(label))) + 2 == n_tokens
    return label


@pytest.fixture(scope="module", params=["ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14"])
def clip(request):
    return tca.load_model(request.param, "none", seed=1)


def test_cut_pass_equals_open_clip(clip):
    tok = clip.tokenizer
    assert clip.text_tower is not None
    prompts = [
        "a photo of a cat.",
        "dog",
        "a photo of a " + _long_label(tok, "a photo of a {}.", 77) + ".",
        "a black and white photo of the " + "ox " * 20 + ".",
        _long_label(tok, "{}", 76),
        "x",
    ]
    tokens = tok(prompts)
    lengths = tokens.argmax(-1) + 1
    assert lengths.max() == 77 and lengths.min() == 3 and len(set(lengths.tolist())) == 5
    with torch.inference_mode():
        ref = clip.model.encode_text(tokens)
    got = text.encode_tokens(clip.model, tokens, clip.text_tower)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-5
    # a batch of short prompts only: cut to their own length, still equal
    short = tok(["a cat.", "a photo of a small dog.", "an origami fox."])
    with torch.inference_mode():
        ref = clip.model.encode_text(short)
    assert (text.encode_tokens(clip.model, short, clip.text_tower) - ref).abs().max() < 1e-5


def test_class_embeddings_equal_the_full_ensemble(tiny_clip):
    clip = tiny_clip
    temps = TEMPLATES["imagenet80"][:12]
    labels = ["cat", "golden retriever", _long_label(clip.tokenizer, max(temps, key=len), 77)]
    prompts = [t.format(l) for l in labels for t in temps]
    with torch.inference_mode():
        feats = torch.nn.functional.normalize(
            clip.model.encode_text(clip.tokenizer(prompts)), dim=-1
        )
    ref = torch.nn.functional.normalize(feats.view(3, len(temps), -1).mean(1), dim=-1)
    got = text.class_embeddings(
        clip.model,
        clip.tokenizer,
        labels,
        temps,
        text.LabelCache(),
        clip.device,
        clip.text_tower,
        chunk=20,
    )
    assert (got - ref).abs().max() < 1e-5


def test_per_label_cache_encodes_only_new_labels(tiny_clip):
    clip = tca.models.ClipModel(
        tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer, tiny_clip.name, None
    )
    temps = TEMPLATES["imagenet80"]
    seen = []
    a = clip.encode_text(["cat", "dog"], "imagenet80", progress=lambda d, t: seen.append(t))
    assert seen[-1] == 2 * len(temps)
    seen.clear()
    b = clip.encode_text(["dog", "fox", "cat"], "imagenet80", progress=lambda d, t: seen.append(t))
    assert seen and set(seen) == {len(temps)}  # one new label: 80 prompts
    assert torch.equal(b[0], a[1]) and torch.equal(b[2], a[0])
    seen.clear()
    clip.encode_text(["fox", "cat"], "imagenet80", progress=lambda d, t: seen.append(t))
    assert seen == []  # all cached
    clip.encode_text(["fox", "cat"], "single", progress=lambda d, t: seen.append(t))
    assert seen == [2]  # another template set is another key
    assert len(clip.text_cache) == 5
    fresh = text.class_embeddings(
        clip.model, clip.tokenizer, ["fox"], temps, text.LabelCache(), clip.device, clip.text_tower
    )
    assert (fresh[0] - b[1]).abs().max() < 1e-6


def test_label_cache_is_bounded():
    cache = text.LabelCache(max_labels=3)
    for i, label in enumerate("abcd"):
        cache.put(label, ("{}",), torch.full((2,), float(i)))
    assert len(cache) == 3 and cache.get("a", ("{}",)) is None
    assert cache.get("b", ("{}",)) is not None  # b is now the most recent
    cache.put("e", ("{}",), torch.zeros(2))
    assert cache.get("c", ("{}",)) is None and cache.get("b", ("{}",)) is not None


def _custom(text_cfg: dict) -> CustomTextCLIP:
    torch.manual_seed(0)
    vision = dict(layers=1, width=32, head_width=16, patch_size=16, image_size=32)
    base = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    return CustomTextCLIP(embed_dim=16, vision_cfg=vision, text_cfg=dict(base, **text_cfg)).eval()


def test_towers_where_the_cut_is_not_exact_fall_back_to_open_clip():
    tok = open_clip.get_tokenizer("ViT-B-32")
    tokens = tok(["a photo of a cat.", "a dog"])
    # SigLIP-style: no causal mask, pooled at the last position
    for cfg in (
        dict(no_causal_mask=True, pool_type="last"),
        dict(pool_type="last"),
        dict(embed_cls=True),
    ):
        model = _custom(cfg)
        assert text.text_tower(model) is None, cfg
        with torch.inference_mode():
            assert torch.equal(text.encode_tokens(model, tokens, None), model.encode_text(tokens))
    # a causal open_clip TextTransformer in a CustomTextCLIP takes the cut pass, exactly
    model = _custom(dict(pool_type="argmax", proj_bias=True))
    tower = text.text_tower(model)
    assert tower is not None
    with torch.inference_mode():
        ref = model.encode_text(tokens)
    assert (text.encode_tokens(model, tokens, tower) - ref).abs().max() < 1e-5
    # an unknown module: no tower
    assert text.text_tower(torch.nn.Linear(2, 2)) is None
