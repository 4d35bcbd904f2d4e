# syntax=docker/dockerfile:1
#
# MLflow tracking server + Model Registry for fsr: PostgreSQL backend store (psycopg2), artifacts
# proxied to S3 (boto3). Configuration comes from the environment at run time
# (infra/mlflow/deployment.yaml); nothing secret is baked in.
#
# Build (the context is this folder; nothing from the repository is copied):
#   docker build -f infra/docker/mlflow.Dockerfile -t REGISTRY/fsr-mlflow:3.17.2 infra/docker
#
# MLFLOW_VERSION must match the client's pin (mlflow in infra/docker/constraints.txt): the server
# migrates the database schema on start, and a newer server's schema may not suit older clients.

# Pin a digest (python:3.11-slim-bookworm@sha256:...) for byte-for-byte reproducible builds.
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5

LABEL org.opencontainers.image.title="fsr-mlflow" \
      org.opencontainers.image.version="${MLFLOW_VERSION}"

# GIT_PYTHON_REFRESH: MLflow looks for git to tag runs; the server has none and needs none.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet

RUN pip install \
        "mlflow==${MLFLOW_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && mlflow --version

# Unprivileged user; the Deployment sets runAsNonRoot and this uid.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlflow
USER 1000
WORKDIR /home/mlflow

EXPOSE 5000
# The Deployment supplies the full command; this default serves on all interfaces.
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
