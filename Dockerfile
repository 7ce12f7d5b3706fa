# zsad in a container. torch's PyPI wheels for Linux x86_64 carry their own CUDA libraries, so any
# Python 3.11 base works; the default is the official slim image.
#   docker build -t zsad .                       (or: podman build / buildah bud)
#   docker run --gpus all --shm-size 8g -v /data:/data -v $PWD/outputs:/app/outputs \
#       -e WANDB_API_KEY zsad train -c conf/train/celeba32.yaml data.root=/data/celeba
#   docker run --rm zsad demo --quick            (CPU, offline, about 2 minutes)
# Another base (an internal mirror, a CUDA image with Python 3.11): --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The torch version the project is tested with (the Makefile's TORCH_SPEC).
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ENV PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app

# torch first: the largest layer, cached across code changes.
RUN python3 -m venv /opt/venv && pip install --no-compile ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY zsad zsad
# Editable, so zsad finds conf/ beside its package as in a clone.
RUN pip install -e .
COPY conf conf
COPY experiments experiments

ENTRYPOINT ["zsad"]
CMD ["--help"]
