#!/usr/bin/env python3
"""Export torchvision ImageNet weights to safetensors files the `patchcore` crate can load.

Requires PyTorch, torchvision and safetensors, and internet access the first time (torchvision
downloads the checkpoints into its cache). Writes, into OUT_DIR:

  resnet18.safetensors          torchvision resnet18, IMAGENET1K_V1
  wide_resnet50_2.safetensors   torchvision wide_resnet50_2, IMAGENET1K_V1 (the weights used by
                                the original PatchCore code, `wide_resnet50_2-95faca4d.pth`)

Tensor names are torchvision's state-dict keys; `fc.*` and `num_batches_tracked` are dropped
(the crate does not use them). Tensors are stored as float32. The SHA-256 of each file is
printed; `Backbone::weights_sha256()` reports the same digest.

Usage: python3 scripts/export_torchvision.py OUT_DIR [--models resnet18,wide_resnet50_2]
"""

import argparse
import hashlib
import os
import sys


MODELS = {
    # name -> (constructor name, weights enum name)
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
}
DEFAULT_MODELS = ["resnet18", "wide_resnet50_2"]


def export(name, out_dir):
    import torchvision
    from safetensors.torch import save_file

    ctor_name, weights_name = MODELS[name]
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    model = getattr(torchvision.models, ctor_name)(weights=weights)
    model.eval()
    tensors = {
        k: v.detach().float().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    save_file(tensors, path, metadata={"source": f"torchvision {weights_name}.IMAGENET1K_V1"})
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"{digest}  {path}  ({len(tensors)} tensors)")
    return path


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the .safetensors files into")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated subset of {sorted(MODELS)} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    for name in names:
        export(name, args.out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
