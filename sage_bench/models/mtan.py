"""MTAN on SegNet (Liu et al., 2019) as the MTL lineage behind Table 2 builds it.

The network of ``SegNetMtan`` in CAGrad / Nash-MTL / FAMO / FairGrad / SAMO
(``experiments/{nyuv2,cityscapes}/models.py``), for any list of tasks:

- a shared SegNet: five encoder levels (``encoder_block[i]`` then ``conv_block_enc[i]``, one
  3x3 conv-BN-ReLU at levels 0-1 and two at 2-4, then 2x2 max pooling with indices) and five
  decoder levels (unpooling with those indices, ``decoder_block``, ``conv_block_dec``);
  filters ``(64, 128, 256, 512, 512)``;
- per task, five encoder and five decoder attention modules (1x1 conv-BN-ReLU, 1x1
  conv-BN-sigmoid) whose masks multiply the shared features, chained through the shared
  ``encoder_block_att`` / ``decoder_block_att`` convolutions (max pooling down, bilinear
  ``align_corners=True`` upsampling up);
- per task a head ``pred.<task>``: 3x3 conv (64 -> 64) then 1x1 conv (64 -> channels), no
  activation between; segmentation outputs are log-softmax, normals are divided by their L2
  norm (no epsilon, as there), depth is raw.

Initialisation as there: Xavier-normal convolution weights, zero biases, BatchNorm weight 1 and
bias 0, applied in module order after PyTorch's default initialisation, so the same seed gives
the same weights as the lineage's model. Parameter counts: NYUv2 (13 classes, depth, normals)
44,229,073; Cityscapes (7 classes, depth) 41,206,984.

``shared_parameters()`` is every parameter whose name lacks ``"pred"``, as the lineage's
``SegNetMtan.shared_parameters``: it *includes* every task's attention modules, so a task's
gradient of the "shared" parameters is exactly zero on the other tasks' attention.
``task_parameters(task)`` is that task's head. Inputs need sides divisible by 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.models.registry import register_backbone
from sage_bench.mtl.tasks import Task
from sage_bench.records import MULTI_TASK

PAPER_FILTERS = (64, 128, 256, 512, 512)
NARROW_FILTERS = (8, 16, 32, 32, 32)
WIDTHS = {"paper": PAPER_FILTERS, "narrow": NARROW_FILTERS}


def conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def attention_layer(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid: a soft mask over features."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=1, padding=0),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, kernel_size=1, padding=0),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )


def prediction_head(channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv keeping the width, then a 1x1 conv to the task's channels."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.Conv2d(channels, out_channels, kernel_size=1, padding=0),
    )


class MTAN(nn.Module):
    """Multi-Task Attention Network on SegNet; ``forward(x) -> {task name: prediction}``."""

    def __init__(self, tasks: Sequence[Task], in_channels: int = 3, filters: Sequence[int] = PAPER_FILTERS):
        super().__init__()
        f = list(filters)
        if len(f) != 5 or f[3] != f[4]:
            raise ValueError(f"MTAN needs five filter widths with the last two equal, got {f}")
        if not tasks:
            raise ValueError("MTAN needs at least one task")
        self.tasks = list(tasks)
        self.filters = tuple(f)

        self.encoder_block = nn.ModuleList([conv_layer(in_channels, f[0])])
        self.decoder_block = nn.ModuleList([conv_layer(f[0], f[0])])
        for i in range(4):
            self.encoder_block.append(conv_layer(f[i], f[i + 1]))
            self.decoder_block.append(conv_layer(f[i + 1], f[i]))

        self.conv_block_enc = nn.ModuleList([conv_layer(f[0], f[0])])
        self.conv_block_dec = nn.ModuleList([conv_layer(f[0], f[0])])
        for i in range(4):
            if i == 0:
                self.conv_block_enc.append(conv_layer(f[1], f[1]))
                self.conv_block_dec.append(conv_layer(f[0], f[0]))
            else:
                self.conv_block_enc.append(nn.Sequential(conv_layer(f[i + 1], f[i + 1]), conv_layer(f[i + 1], f[i + 1])))
                self.conv_block_dec.append(nn.Sequential(conv_layer(f[i], f[i]), conv_layer(f[i], f[i])))

        # per-task attention: encoder level j takes [shared features, previous attention output]
        self.encoder_att = nn.ModuleDict()
        self.decoder_att = nn.ModuleDict()
        for task in self.tasks:
            self.encoder_att[task.name] = nn.ModuleList(
                [attention_layer(f[0], f[0], f[0])]
                + [attention_layer(2 * f[i + 1], f[i + 1], f[i + 1]) for i in range(4)]
            )
        for task in self.tasks:
            self.decoder_att[task.name] = nn.ModuleList(
                [attention_layer(2 * f[0], f[0], f[0])]
                + [attention_layer(f[i + 1] + f[i], f[i], f[i]) for i in range(4)]
            )
        self.encoder_block_att = nn.ModuleList([conv_layer(f[0], f[1])])
        self.decoder_block_att = nn.ModuleList([conv_layer(f[0], f[0])])
        for i in range(4):
            if i < 3:
                self.encoder_block_att.append(conv_layer(f[i + 1], f[i + 2]))
                self.decoder_block_att.append(conv_layer(f[i + 1], f[i]))
            else:
                self.encoder_block_att.append(conv_layer(f[i + 1], f[i + 1]))
                self.decoder_block_att.append(conv_layer(f[i + 1], f[i + 1]))

        self.pred = nn.ModuleDict({t.name: prediction_head(f[0], t.channels) for t in self.tasks})
        self.down_sampling = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.up_sampling = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The lineage's initialisation, in module order."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter whose name lacks ``"pred"``: the SegNet and all attention modules."""
        return [p for n, p in self.named_parameters() if "pred" not in n]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters of ``task``'s head."""
        if task not in self.pred:
            raise KeyError(f"unknown task {task!r}; tasks: {', '.join(self.task_names)}")
        return list(self.pred[task].parameters())

    def _shared(self, x: torch.Tensor):
        encoder, upsampled, decoder, indices = [], [], [], []
        pooled = x
        for i in range(5):
            first = self.encoder_block[i](pooled)
            second = self.conv_block_enc[i](first)
            pooled, index = self.down_sampling(second)
            encoder.append((first, second))
            indices.append(index)
        current = pooled
        for i in range(5):
            up = self.up_sampling(current, indices[-i - 1])
            first = self.decoder_block[-i - 1](up)
            current = self.conv_block_dec[-i - 1](first)
            upsampled.append(up)
            decoder.append(current)
        return encoder, upsampled, decoder

    def _attend(self, name: str, encoder, upsampled, decoder) -> torch.Tensor:
        masked = None
        for j in range(5):
            first, second = encoder[j]
            inputs = first if j == 0 else torch.cat((first, masked), dim=1)
            masked = self.encoder_att[name][j](inputs) * second
            masked = F.max_pool2d(self.encoder_block_att[j](masked), kernel_size=2, stride=2)
        for j in range(5):
            up = F.interpolate(masked, scale_factor=2, mode="bilinear", align_corners=True)
            up = self.decoder_block_att[-j - 1](up)
            mask = self.decoder_att[name][-j - 1](torch.cat((upsampled[j], up), dim=1))
            masked = mask * decoder[j]
        return masked

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        encoder, upsampled, decoder = self._shared(x)
        outputs = {}
        for task in self.tasks:
            out = self.pred[task.name](self._attend(task.name, encoder, upsampled, decoder))
            if task.kind == "segmentation":
                out = F.log_softmax(out, dim=1)
            elif task.kind == "normal":
                out = out / torch.norm(out, p=2, dim=1, keepdim=True)
            outputs[task.name] = out
        return outputs


@register_backbone("mtan", task=MULTI_TASK)  # the network of the multi-task data sets
def mtan(tasks: Sequence[Task], width: str = "paper", in_channels: int = 3) -> MTAN:
    """MTAN with the paper's filters (``width="paper"``) or narrow ones (``"narrow"``:
    ``(8, 16, 32, 32, 32)``, 0.6% of the parameters, for the embedded DigitScenes on a CPU)."""
    if width not in WIDTHS:
        raise ValueError(f"unknown MTAN width {width!r}; valid choices: {', '.join(WIDTHS)}")
    return MTAN(tasks, in_channels=in_channels, filters=WIDTHS[width])
