"""Run one ncnn model on the board under the counting qemu and print its instructions per frame as JSON.

The board-side half of scripts/bench_mobilenet_a72.py: stdlib, numpy, ncnn and ``fdq.device.instructions``
only (what a board has). Each frame is marked as the runner marks its frames (``fdq.device.instructions``),
with nothing but the network between the inference marks.

    /opt/fdq-count/run PYTHON count_ncnn.py PARAM BIN INPUT_BLOB OUTPUT_BLOB C H W FRAMES WARMUP [int8]
"""
from __future__ import annotations

import json
import sys

import ncnn
import numpy as np

from fdq.device import instructions as ins


def main(argv: list) -> int:
    param, weights, input_blob, output_blob = argv[:4]
    c, h, w, frames, warmup = (int(v) for v in argv[4:9])
    int8 = argv[9:] == ["int8"]
    counter = ins.InstructionCounter()
    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_int8_inference = int8  # an int8 model loaded without it crashes ncnn
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    net.load_param(param)
    net.load_model(weights)
    counter.mark(ins.LOADED)
    blob = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)

    def infer() -> ncnn.Mat:
        with net.create_extractor() as ex:
            ex.input(input_blob, ncnn.Mat(blob))
            return ex.extract(output_blob)[1]

    for frame in range(warmup):  # unmarked, as the runner's warm-up
        out = infer()
        if frame == 0:
            counter.mark(ins.FIRST_FRAME)
    for frame in range(frames):
        counter.mark(ins.FRAME_START, frame)
        out = counter.around_inference(lambda _: infer())(None)
        counter.mark(ins.FRAME_END, frame)
    result = counter.result(warmup, 1)
    result["output_shape"] = [out.c, out.h, out.w]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
