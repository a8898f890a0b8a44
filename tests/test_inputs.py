"""Bad and odd inputs: images of every mode and size, labels, checkpoints, model names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tca
from tca.errors import LabelError, WeightsUnavailableError
from tca.images import ImageError, load_image
from tca.labels import parse_labels, validate_labels


def _png(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_every_mode_becomes_rgb(mode, tmp_path, tiny_clip):
    arr = (np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    img = (
        Image.fromarray(arr).convert(mode)
        if mode not in ("I;16", "I", "F")
        else Image.fromarray(arr[..., 0].astype(np.uint16) * 200).convert(mode)
    )
    ext = "tiff" if mode in ("CMYK", "I;16", "I", "F") else "png"
    path = img.save(tmp_path / f"x.{ext}") or tmp_path / f"x.{ext}"
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    if mode in ("I;16", "I"):
        # 16-bit data is rescaled, not clipped to white
        assert 0 < np.asarray(out).mean() < 255
    assert tiny_clip.preprocess(out).shape == (3, 224, 224)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert 120 <= load_image(half).getpixel((0, 0))[0] <= 135


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (5000, 3)])
def test_tiny_and_extreme_aspect_images(size, tiny_clip):
    img = Image.new("RGB", size, (200, 100, 50))
    out = load_image(img)
    w, h = out.size
    assert max(w, h) <= 2 * min(w, h) + 1  # only the centre region CLIP would keep
    assert tiny_clip.preprocess(out).shape == (3, 224, 224)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = _png(Image.new("1", (9000, 9000)), tmp_path / "bomb.png", optimize=True)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageError, match="megapixels"):
        load_image(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a readable image"),
        (b"definitely not an image", "not a readable image"),
    ],
)
def test_unreadable_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_truncated_and_missing_files(tmp_path, example_image):
    data = Path(example_image).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="text.png is not a readable image"):
        load_image(tmp_path / "text.png")


def test_arrays():
    assert load_image(np.zeros((5, 6), dtype=np.float32)).size == (6, 5)
    assert load_image(np.random.rand(5, 6, 3)).mode == "RGB"
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 6, 7)))


def test_parse_labels():
    assert parse_labels("cat, dog,\n red car ,") == ["cat", "dog", "red car"]
    assert parse_labels(" , \n") == []
    assert parse_labels(["a ", " b"]) == ["a", "b"]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "at least two.*no labels"),
        (["cat"], "only one label"),
        (["cat", "Cat", "dog"], "duplicate label: 'cat'"),
        (["cat", " "], "label 2 is empty"),
        (["cat", "x" * 301], "301 characters"),
        ([f"l{i}" for i in range(101)], "too many labels: 101"),
    ],
)
def test_bad_labels(labels, message):
    with pytest.raises(LabelError, match=message):
        validate_labels(labels, max_labels=100)


def test_labels_longer_than_the_text_context(tiny_clip):
    long = " ".join(["x7q"] * 70)  # 279 characters, far more than 77 BPE tokens
    with pytest.raises(LabelError, match="too long: \\d+ tokens.*at most 77"):
        validate_labels(["cat", long], tiny_clip.tokenizer, "single")
    ok = " ".join(["cat"] * 60)
    assert validate_labels(["dog", ok], tiny_clip.tokenizer, "single")[1] == ok


def test_text_embeddings_are_cached_and_normalised(tiny_clip):
    a = tiny_clip.encode_text(["cat", "dog"], "single")
    assert torch.equal(a, tiny_clip.encode_text(["cat", "dog"], "single"))  # per-label cache
    assert torch.allclose(a.norm(dim=-1), torch.ones(2))
    b = tiny_clip.encode_text(["cat", "dog"], "imagenet80")
    assert b.shape == a.shape and not torch.allclose(a, b)
    assert len(tca.TEMPLATES["imagenet80"]) == 80


def test_checkpoints_load_safely(tmp_path, tiny_clip):
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in tiny_clip.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        clip = tca.load_model("tca-tiny-ViT", checkpoint=tmp_path / name)
        assert clip.pretrained == str(tmp_path / name) and not clip.is_random
        x = torch.randn(1, 3, 224, 224)
        with torch.inference_mode():
            tca.unpatch(tiny_clip.model)
            assert torch.equal(clip.model.encode_image(x), tiny_clip.model.encode_image(x))

    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsUnavailableError) as info:
        tca.load_model("tca-tiny-ViT", checkpoint=tmp_path / "evil.pt")
    assert not ran.exists()  # nothing was unpickled
    head, refused, tail = str(info.value).partition("GLOBAL io.open")  # torch names what it refused
    assert head == (
        f"cannot read checkpoint {str(tmp_path / 'evil.pt')!r} (refused by a "
        f"weights-only load, which unpickles tensors only: Unsupported global: "
    )
    assert refused and tail == (
        " was not an allowed global by default); it must be a .safetensors "
        "file or a PyTorch state dict saved with plain tensors"
    )
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        tca.load_model("tca-tiny-ViT", checkpoint=tmp_path / "nope.safetensors")
    save_file({"visual.proj": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="does not fit this architecture") as info:
        tca.load_model("tca-tiny-ViT", checkpoint=tmp_path / "wrong.safetensors")
    n_keys = len(state)
    proj = tuple(state["visual.proj"].shape)
    first = ", ".join(sorted(k for k in state if k != "visual.proj")[:5])
    assert str(info.value) == (  # every key but visual.proj is missing, the first five named
        f"checkpoint {str(tmp_path / 'wrong.safetensors')!r} does not fit this architecture: "
        f"{n_keys - 1} missing key(s): {first}, ...; "
        f"1 shape mismatch(es): visual.proj (checkpoint (2, 2), model {proj})"
    )
    extra = dict(state, **{"visual.extra_head.weight": torch.zeros(3)})
    del extra["logit_scale"]
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsUnavailableError) as info:
        tca.load_model("tca-tiny-ViT", checkpoint=tmp_path / "extra.safetensors")
    assert str(info.value).endswith(
        "does not fit this architecture: 1 missing key(s): "
        "logit_scale; 1 unexpected key(s): visual.extra_head.weight"
    )


def test_checkpoint_from_environment_is_read_by_the_cli_only(tmp_path, monkeypatch):
    from tca.cli import build_parser

    monkeypatch.setenv("TCA_CHECKPOINT", str(tmp_path / "env.safetensors"))
    args = build_parser().parse_args(["predict", "x.jpg", "--labels", "a,b"])
    assert args.checkpoint == str(tmp_path / "env.safetensors")
    clip = tca.load_model("tca-tiny-ViT", pretrained="none")  # the library ignores the variable
    assert clip.is_random


def test_error_messages_do_not_leak_server_directories(tmp_path):
    (tmp_path / "upload.png").write_bytes(b"garbage")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "upload.png")
    assert "upload.png" in str(info.value) and str(tmp_path) not in str(info.value)


def test_offline_pretrained_fails_fast_with_instructions():
    from tca.weights import WEIGHTS_HELP

    with pytest.raises(
        WeightsUnavailableError, match="--checkpoint PATH.*--pretrained none"
    ) as info:
        tca.load_model("ViT-B-32-quickgelu", pretrained="openai")
    assert str(info.value) == (
        "pretrained weights ViT-B-32-quickgelu/openai are not in the local cache and the Hugging "
        f"Face Hub is offline (HF_HUB_OFFLINE=1). {WEIGHTS_HELP}"
    )
    # raised by the offline check itself, not wrapped from a failed download: no request was made
    assert info.value.__cause__ is None


def test_unknown_model_and_tag():
    with pytest.raises(tca.UnknownModelError, match="unknown open_clip model 'ViT-Q-99'"):
        tca.load_model("ViT-Q-99")
    with pytest.raises(tca.UnknownModelError, match="no pretrained tag 'nope'.*openai"):
        tca.load_model("ViT-B-32-quickgelu", pretrained="nope")
    with pytest.raises(tca.UnknownModelError, match="unknown open_clip model 'ViT-Q-99'"):
        tca.Geometry.from_name("ViT-Q-99")
    with pytest.raises(tca.UnsupportedModelError):
        tca.load_model("RN50", pretrained="none")


def test_random_weights_are_flagged_and_seeded(tiny_clip):
    assert tiny_clip.is_random and tiny_clip.pretrained is None
    assert tiny_clip.weights_description == (
        "tca-tiny-ViT with RANDOM weights (predictions are meaningless)"
    )
    a = tca.load_model("tca-tiny-ViT", pretrained="none", seed=3)
    b = tca.load_model("tca-tiny-ViT", pretrained="none", seed=3)
    c = tca.load_model("tca-tiny-ViT", pretrained="none", seed=4)
    pa, pb, pc = (m.model.visual.proj for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_cached_pretrained_weights_load_offline_without_network(tmp_path, monkeypatch):
    """Weights already in the Hugging Face cache load straight from the file (no Hub call), with
    the preprocessing of their pretrained config."""
    import open_clip
    from open_clip import pretrained
    from safetensors.torch import save_file

    # open_clip has no public call to register a pretrained tag; its look-ups read this table.
    cfg = dict(
        url="",
        hf_hub="tca-test/tiny-vit/",
        mean=(0.25, 0.5, 0.75),
        std=(0.2, 0.3, 0.4),
        interpolation="bilinear",
        resize_mode="squash",
    )
    monkeypatch.setitem(pretrained._PRETRAINED, "tca-tiny-ViT", {"cachetest": cfg})
    with pytest.raises(WeightsUnavailableError, match="not in the local cache.*HF_HUB_OFFLINE=1"):
        tca.load_model("tca-tiny-ViT", "cachetest", cache_dir=tmp_path)  # nothing cached yet
    src = open_clip.create_model("tca-tiny-ViT", pretrained=None)
    src.logit_scale.data.fill_(4.0)  # unlike every random init
    snap = tmp_path / "models--tca-test--tiny-vit" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0123abcd")
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()},
        str(snap / "open_clip_model.safetensors"),
    )
    clip = tca.load_model("tca-tiny-ViT", "cachetest", cache_dir=tmp_path)
    assert clip.pretrained == "cachetest" and not clip.is_random
    for key, value in src.state_dict().items():
        assert torch.equal(clip.model.state_dict()[key], value), key
    # the preprocessing comes from the pretrained config (a file path alone would lose it)
    resize, norm = clip.preprocess.transforms[0], clip.preprocess.transforms[-1]
    assert tuple(norm.mean) == (0.25, 0.5, 0.75) and tuple(norm.std) == (0.2, 0.3, 0.4)
    assert resize.size == (224, 224) and resize.interpolation.value == "bilinear"  # squash
