# fmrilm-bids BIDS-App image. Runs with --network none: the template, atlases and model
# weights are inside the image. Install goes through scripts/install.sh, like the README.
#
#   docker build -t fmrilm/fmrilm-bids .                                  # CPU
#   docker build -t fmrilm/fmrilm-bids:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA
#   docker run --rm --network none -v $PWD/bids:/data:ro -v $PWD/out:/out \
#       fmrilm/fmrilm-bids /data /out participant
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# setuptools-scm reads the version from .git; without it in the build context, pass one.
ARG VERSION=""

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

ENV FMRILM_CONTAINER=docker \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    FMRILM_MODELS_DIR=/opt/fmrilm/models \
    HOME=/home/fmrilm \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

COPY . /src/fmrilm-bids
RUN cd /src/fmrilm-bids \
    && if [ -n "$VERSION" ]; then export SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION"; fi \
    && FMRILM_TORCH_INDEX_URL="$TORCH_INDEX_URL" bash scripts/install.sh --system \
    && chmod -R a+rwX /opt/templateflow /opt/fmrilm

RUN useradd --create-home --home-dir /home/fmrilm --uid 1000 fmrilm \
    && chmod -R a+rwX /home/fmrilm
USER fmrilm
WORKDIR /home/fmrilm
ENTRYPOINT ["fmrilm-bids"]
