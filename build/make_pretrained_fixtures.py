#!/usr/bin/python3
"""Writes the pretrained-weights fixtures of the tests (test/Microsoft.ML.Decorrelation.Tests/Fixtures/pretrained).

Needs Debian's python3-torchvision (torchvision 0.14, torch 1.13): `apt-get install python3-torchvision`, then
    /usr/bin/python3 build/make_pretrained_fixtures.py
CI does not run it; the files it writes are committed. See docs/pretrained.md.

Each network is a torchvision ResNet (torchvision's own ResNet class, BasicBlock and Bottleneck, so torchvision's
key names and structure) whose widths are reduced so the files stay small: the stem and stage widths are
w, 2w, 4w, 8w instead of 64, 128, 256, 512. Its weights are torchvision's random initialisation; BatchNorm's
affine parameters and running statistics are then randomised too, so that a loader that skipped them would fail.
For each network the script writes its state dict (PyTorch zip format, and safetensors for ResNet-18) and
`<name>.expected.safetensors`: a fixed input (2×3×64×64), PyTorch's eval-mode logits of it, a grayscale input
(2×1×64×64) and the logits of that input repeated over the three channels (what a network whose first
convolution sums the three channels' weights must give).

It also writes the files of the error tests: a pickle that is a list, not a state dict; a whole pickled module;
and a truncated copy of the ResNet-18 file.
"""
import json
import os
import struct
import sys

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "test", "Microsoft.ML.Decorrelation.Tests", "Fixtures", "pretrained")
CLASSES = 5


def reduced_resnet(block, layers, width):
    """torchvision's ResNet with stage widths width·(1, 2, 4, 8); same module names as torchvision's resnetNN."""
    model = ResNet(block, layers, num_classes=CLASSES)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(block, width, layers[0])
    model.layer2 = model._make_layer(block, width * 2, layers[1], stride=2)
    model.layer3 = model._make_layer(block, width * 4, layers[2], stride=2)
    model.layer4 = model._make_layer(block, width * 8, layers[3], stride=2)
    model.fc = nn.Linear(width * 8 * block.expansion, CLASSES)
    # torchvision's own initialisation of the rebuilt modules (as in ResNet.__init__).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
                m.num_batches_tracked.fill_(1234)
    return model.eval()


def write_safetensors(path, tensors):
    """The safetensors layout (8-byte little-endian header length, JSON header, raw little-endian data)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for key, value in tensors.items():
        data = value.detach().contiguous().numpy().tobytes()
        header[key] = {"dtype": names[value.dtype], "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(2026)
    networks = {
        "resnet18-w8": reduced_resnet(BasicBlock, [2, 2, 2, 2], 8),
        "resnet50-w4": reduced_resnet(Bottleneck, [3, 4, 6, 3], 4),
    }
    inputs = torch.Generator().manual_seed(11)
    rgb = 2 * torch.rand((2, 3, 64, 64), generator=inputs) - 1
    gray = 2 * torch.rand((2, 1, 64, 64), generator=inputs) - 1
    for name, model in networks.items():
        state = model.state_dict()
        torch.save(state, os.path.join(OUT, f"{name}.pth"))
        if name.startswith("resnet18"):
            write_safetensors(os.path.join(OUT, f"{name}.safetensors"), state)
        with torch.no_grad():
            logits = model(rgb)
            gray_logits = model(gray.repeat(1, 3, 1, 1))
        write_safetensors(os.path.join(OUT, f"{name}.expected.safetensors"),
                          {"input": rgb, "logits": logits, "gray_input": gray, "gray_logits": gray_logits})
        print(f"{name}: {sum(v.numel() for v in state.values())} values, logits[0] = {logits[0].tolist()}")

    torch.save([1, 2, 3], os.path.join(OUT, "not-a-state-dict.pt"))
    torch.save(nn.Linear(2, 2), os.path.join(OUT, "whole-module.pt"))
    with open(os.path.join(OUT, "resnet18-w8.pth"), "rb") as f:
        data = f.read()
    with open(os.path.join(OUT, "truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])
    print(f"torch {torch.__version__}; wrote {OUT}")


if __name__ == "__main__":
    sys.exit(main())
