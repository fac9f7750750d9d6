//! ResNet-family backbones (torchvision layout) with BatchNorm folded at load time.
