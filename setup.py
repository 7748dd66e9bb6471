from setuptools import find_packages, setup

setup(
    name="fishscale",
    version="0.1.0",
    description="Train image classifiers on huge, long-tailed species datasets (fish-vista).",
    packages=find_packages(include=["fishscale", "fishscale.*"]),
    package_data={"fishscale.data.synth": ["*.csv"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "timm>=1.0",
        "nvidia-dali-cuda120>=1.40",
        "deepspeed>=0.15",
        "webdataset>=0.2.90",
        "numpy",
        "pandas",
        "click>=8.1",
        "pyyaml",
        "pillow",
        "safetensors",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={"test": ["pytest", "kornia", "scikit-learn"]},
    entry_points={"console_scripts": ["fishscale=fishscale.cli:main"]},
)
