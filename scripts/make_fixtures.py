#!/usr/bin/env python3
"""Regenerate the backbone parity fixtures in tests/fixtures/backbone/.

Builds SMALL ResNets from torchvision's own BasicBlock / Bottleneck modules (with a tiny stem and
few planes so the fixtures stay small and the Rust tests fast), randomises every BatchNorm's
affine parameters AND running statistics (eval-mode BatchNorm at init is the identity and would
hide folding bugs), runs them in eval mode in float64 on f16-representable inputs, and writes:

  inputs.safetensors           x224 [1,3,224,224], x225x193 [2,3,225,193]  (F16, exact values)
  <net>.safetensors            weights, torchvision names, incl. fc.* and num_batches_tracked
  <net>_out.safetensors        F32 reference taps "<size>.<layer>", e.g. "224.layer2"
                               (layer1 only for the f32 nets, and for bottleneck only at 224)

Nets (the Rust ResNetSpec in tests/all/backbone_parity.rs mirrors these numbers):
  basic       BasicBlock [2,2,2,2], stem 8, planes [8,16,32,32]; taps at 224 (batch 1) and
              225x193 (batch 2)
  bottleneck  Bottleneck [1,2,2,1], stem 8, planes [8,16,32,16], width_per_group 128 (the wide
              path: inner width 2·planes); taps at 224 and 225x193 (first image only)
  basic_f16   like basic, other seed, weights rounded to and stored as F16; taps at 224
  basic_bf16  like basic, other seed, weights rounded to and stored as BF16; taps at 224

The reference is computed in float64 from the exact stored weight values, so it is the true
answer up to ~1e-15; the Rust f32 result is compared with a relative tolerance (see the test).

Usage: python3 scripts/make_fixtures.py [out_dir]   (default tests/fixtures/backbone)
"""

import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class SmallResNet(nn.Module):
    """torchvision's ResNet layout with configurable stem width and planes."""

    def __init__(self, block, layers, stem, planes, width_per_group=64, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for i, (n, p) in enumerate(zip(layers, planes)):
            stride = 1 if i == 0 else 2
            out = p * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out),
                )
            blocks = [block(inplanes, p, stride, down, base_width=width_per_group)]
            blocks += [block(out, p, base_width=width_per_group) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def taps(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


def randomise(model, gen):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) * 1.2 + 0.4)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 2.3 + 0.2)
                m.num_batches_tracked.fill_(1000)
    model.eval()


def build(kind, seed, round_to=None):
    gen = torch.Generator().manual_seed(seed)
    if kind == "basic":
        model = SmallResNet(BasicBlock, [2, 2, 2, 2], 8, [8, 16, 32, 32])
    else:
        model = SmallResNet(Bottleneck, [1, 2, 2, 1], 8, [8, 16, 32, 16], width_per_group=128)
    randomise(model, gen)
    if round_to is not None:
        # Make the float values exactly representable in the storage dtype.
        with torch.no_grad():
            for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
                t.copy_(t.to(round_to).to(torch.float32))
    return model


def state(model, dtype=torch.float32):
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().contiguous()
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def reference(model, x):
    m64 = model.double()
    with torch.no_grad():
        taps = m64.taps(x.double())
    model.float()
    return {k: v.float().contiguous() for k, v in taps.items()}


def stats(name, taps):
    for k, v in taps.items():
        frac0 = (v == 0).float().mean().item()
        print(f"  {name} {k} {tuple(v.shape)} max {v.abs().max().item():.3f} zeros {frac0:.2f}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "backbone")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(12345)
    x224 = torch.randn(1, 3, 224, 224, generator=gen).half()
    x225 = torch.randn(2, 3, 225, 193, generator=gen).half()
    save_file({"x224": x224, "x225x193": x225}, os.path.join(out_dir, "inputs.safetensors"))
    x224, x225 = x224.float(), x225.float()

    cases = [
        ("basic", "basic", 1, None, torch.float32, {"224": x224, "225x193": x225}),
        ("bottleneck", "bottleneck", 2, None, torch.float32, {"224": x224, "225x193": x225[:1]}),
        ("basic_f16", "basic", 3, torch.float16, torch.float16, {"224": x224}),
        ("basic_bf16", "basic", 4, torch.bfloat16, torch.bfloat16, {"224": x224}),
    ]
    for name, kind, seed, round_to, dtype, inputs in cases:
        model = build(kind, seed, round_to)
        save_file(state(model, dtype), os.path.join(out_dir, f"{name}.safetensors"))
        outs = {}
        for size, x in inputs.items():
            taps = reference(model, x)
            stats(f"{name}@{size}", taps)
            for layer, v in taps.items():
                # layer1 maps are the largest; keep them only where they add coverage.
                if layer == "layer1" and (round_to is not None or (kind == "bottleneck" and size != "224")):
                    continue
                outs[f"{size}.{layer}"] = v
        save_file(outs, os.path.join(out_dir, f"{name}_out.safetensors"))

    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"wrote {out_dir}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
