"""fdq: quantize small face detectors on a workstation, run and measure them on an ARM board.

The top-level folders are mapped into one ``fdq`` namespace (``fdq.models``, ``fdq.device``, ...)
so that no generic name such as ``models`` lands in site-packages.
"""
from setuptools import setup

SUBPACKAGES = {
    "fdq.host": "host",
    "fdq.host.commands": "host/commands",
    "fdq.host.export": "host/export",
    "fdq.host.report": "host/report",
    "fdq.device": "device",
    "fdq.device.decoders": "device/decoders",
    "fdq.models": "models",
    "fdq.calibration": "calibration",
    "fdq.profiles": "profiles",
}

setup(
    name="fdq",
    version="0.1.0",
    description="FaceDetect-QAT: int8 face detectors measured on the edge device itself",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=list(SUBPACKAGES),
    package_dir=SUBPACKAGES,
    package_data={
        "fdq.device": ["csrc/*.c", "csrc/*.h"],
        "fdq.profiles": ["*.yaml"],
    },
    install_requires=[
        "torch>=2.9,<2.15",
        "numpy>=1.23,<3",
        "opencv-python-headless>=4.8,<6",
        "paramiko>=3.4,<6",
        "pyyaml>=6.0,<7",
        "psutil>=5.9,<8",
        "rich>=13,<16",
        # fdq-deploy --setup judges a wheel's dependency markers for the board, not for this machine.
        "packaging>=22",
        # .mat ground truth of WIDER FACE (MATLAB v5 files): scipy.io reads them, no hand-written parser.
        "scipy>=1.10,<2",
        # precision-recall plots and comparison charts.
        "matplotlib>=3.7,<4",
        # the embedded default image of `fdq detect` (public-domain photos shipped with the package).
        "scikit-image>=0.22",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "ncnn>=1.0.20240410", "pnnx>=20240410"],
        # MNN: the runtime the 1MB detectors' upstream measures on a Raspberry Pi (int8 there), and its
        # converter and offline quantizer (called in-process, never through its logging wrappers).
        # Wheels for x86_64 and aarch64.
        "mnn": ["MNN==3.6.1"],
        # ExecuTorch with the XNNPACK delegate: PyTorch's own path to ARM int8 (PT2E quantization).
        # 1.5.1 + torchao 0.18.0 are the releases that work with torch 2.13. Install them with
        # scripts/install_runtimes.sh (--no-deps: their declared dependencies serve other backends).
        "executorch": ["executorch==1.5.1", "torchao==0.18.0", "ruamel.yaml>=0.17", "flatbuffers>=24",
                       "tabulate>=0.9"],
    },
    entry_points={
        "console_scripts": [
            "fdq=fdq.host.cli:main",
            "fdq-deploy=fdq.host.cli:deploy_main",
            "fdq-profile=fdq.host.cli:profile_main",
            "fdq-demo=fdq.host.demo_remote:main",  # --target: on a board; else fdq.device.demo:main here
            "fdq-run=fdq.device.run:main",  # on a board without an install: python -m fdq.device.run
        ]
    },
)
