# syntax=docker/dockerfile:1
# One image for both components: the operator runs `kvol-operator`, the CSI node plugin
# `kvol-csi`; the `kvol` CLI is there too. Build from the repository root:
#   docker build -t kvol:dev .
# or from another Python 3.11 base image (same in both stages):
#   docker build --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim -t kvol:dev .
# Without docker or a registry, hack/build-image.sh builds the same contents from Debian's
# python3.11 and imports them into the e2e cluster (hack/cluster-up.sh).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The build hook (setup.py) generates the CSI gRPC modules with grpcio-tools; installing
# the build requirements first lets the wheel build without an isolated environment. The
# same grpcio-tools as pyproject.toml's build-system: the modules it writes need a grpcio
# and protobuf at least as new as itself.
RUN pip install "setuptools>=77" wheel "grpcio-tools==1.67.1"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY kvol/ kvol/
COPY operator/ operator/
COPY csi/ csi/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m venv /opt/kvol \
 && /opt/kvol/bin/pip install "$(ls /wheels/kvol-*.whl)[operator,csi]"

FROM ${PYTHON_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="kvol" \
      org.opencontainers.image.description="kvol operator and CSI node plugin" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Same base image in both stages, so the virtualenv's interpreter links stay valid.
COPY --from=build /opt/kvol /opt/kvol
ENV PATH=/opt/kvol/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root by default; the node plugin's pod runs it as root (it mounts into pods).
USER 65532:65532
CMD ["kvol", "--help"]
