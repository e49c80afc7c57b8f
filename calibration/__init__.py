"""fdq.calibration: turning a float detector into an int8 (or fp16) one, by how much data it gets.

Level 0 exports float, level 1 needs no data (fp16 weights, or int8 calibrated on inputs distilled
from the BatchNorm statistics), level 2 calibrates on a folder of images, levels 3/4 train
(QAT, distillation). Every torch.ao.quantization call lives in :mod:`fdq.calibration.quant_api`.
Submodules are imported on use: this package itself stays light.
"""
