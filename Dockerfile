# zsad on a CUDA PyTorch base. Build:  docker build -t zsad .
# Run:    docker run --gpus all --shm-size 8g -v /path/to/data:/data -v $PWD/outputs:/app/outputs \
#           -e WANDB_API_KEY zsad train -c conf/train/celeba32.yaml data.root=/data/celeba
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline \
    PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
COPY zsad/__init__.py zsad/__init__.py
RUN pip install -e . && rm -rf /root/.cache
COPY zsad zsad
COPY conf conf
COPY experiments experiments

ENTRYPOINT ["zsad"]
CMD ["--help"]
