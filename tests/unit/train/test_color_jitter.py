"""ImageNet colour jitter: DARTS' ColorJitter(0.4, 0.4, 0.4, 0.2) on both input paths, per image."""

import torch

from unrealnas.train.targets.color_jitter import IMAGENET_JITTER, imagenet_color_jitter, jitter_batch


def test_jitter_strengths_are_the_darts_ones():
    j = imagenet_color_jitter()
    assert IMAGENET_JITTER == (0.4, 0.4, 0.4, 0.2)
    assert j.brightness == (0.6, 1.4) and j.contrast == (0.6, 1.4) and j.saturation == (0.6, 1.4)
    assert j.hue == (-0.2, 0.2)


def test_jitter_batch_draws_factors_per_image():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    x = img.expand(6, 3, 16, 16).contiguous()
    out = jitter_batch(x, imagenet_color_jitter())
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) == 6  # one image, six different jitters
    assert not torch.equal(out[0], img)


def test_torchvision_imagenet_pipeline_has_the_jitter():
    from PIL import Image
    from torchvision import transforms as T

    from unrealnas.train.targets.imagenet import train_transform

    tf = train_transform(16)
    jitters = [t for t in tf.transforms if isinstance(t, T.ColorJitter)]
    assert len(jitters) == 1 and jitters[0].hue == (-0.2, 0.2)
    img = Image.new("RGB", (20, 20), (120, 60, 200))
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(4)]
    # a flat-colour image stays flat under crop and flip: only the jitter changes its colour
    assert len({tuple(o.mean((1, 2)).round(decimals=3).tolist()) for o in outs}) == 4


def test_ffcv_path_jitters_its_batches():
    import inspect

    from unrealnas.train.targets import imagenet_ffcv

    # the FFCV loader cannot run without .beton files and a GPU build; its batch step is checked by source
    assert "jitter_batch(x, self._jitter)" in inspect.getsource(imagenet_ffcv.FFCVImageNetTarget.train_batches)
