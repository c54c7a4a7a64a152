"""torchvision's ResNet-50, written out with torchvision's module names (torchvision itself
does not install beside the test-only PyTorch 2.13.0), so state dicts have the names and
shapes of the published `resnet50-*.pth` files. Test helper: needs PyTorch."""

import torch
from torch import nn


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: the stride in the 3x3 conv)."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNet50(nn.Module):
    """torchvision.models.resnet50 (stage sizes 3, 4, 6, 3; fc to 1000 classes)."""

    def __init__(self, stage_sizes=(3, 4, 6, 3), width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, blocks in enumerate(stage_sizes):
            planes = width * 2**stage
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(inplanes, planes, 2 if stage > 0 and block == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.num_stages = len(stage_sizes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, 1000)

    def features(self, x):
        """The pooled backbone features `[B, 2048]` (what the fc layer sees)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, batch-norm running statistics included (so a loader that
    dropped or swapped any tensor would change the features)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01, generator=gen)
                module.bias.normal_(0.0, 0.01, generator=gen)
    return model.eval()
