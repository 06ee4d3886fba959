# syntax=docker/dockerfile:1.7
#
# One image runs every voiceslot component; the Helm chart picks the command:
#   voiceslot serve --only allocator | voiceslot serve --only synth | voiceslot operator
#
#   docker build -t voiceslot:0.1.0 .                                        # providers only (slim)
#   docker build --build-arg WITH_LOCAL_ENGINE=true -t voiceslot:0.1.0-local .  # + Coqui/torch
#
# No model weights are baked in: the local engine loads a model directory from a volume
# (providers[].model_dir) or downloads one at run time when allowed (COQUI_TOS_AGREED=1).

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------- build
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build

# "true" adds the `local` extra (torch, torchaudio, torchcodec, coqui-tts: several GB).
ARG WITH_LOCAL_ENGINE=false

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=0

WORKDIR /src
# Only what the wheel is built from (see .dockerignore), plus pyproject.toml and uv.lock.
COPY . .

# The same lock as the README's commands and CI (uv.lock), installed by the same uv
# (pyproject.toml's [tool.uv] required-version): the image gets exactly the versions the
# suite passed with.
RUN pip install --no-cache-dir \
      "uv==$(sed -n 's/^required-version = "==\(.*\)"$/\1/p' pyproject.toml)"

# --locked: refuse to build if pyproject.toml and uv.lock disagree. --no-editable: the
# project goes into /opt/venv as a wheel, so the runtime stage needs no /src.
RUN --mount=type=cache,target=/root/.cache/uv \
    set -eux; \
    extras="--extra operator"; \
    if [ "$WITH_LOCAL_ENGINE" = "true" ]; then extras="$extras --extra local"; fi; \
    uv sync --locked --no-editable --python /usr/local/bin/python $extras; \
    /opt/venv/bin/voiceslot --help >/dev/null

# -------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime

ARG WITH_LOCAL_ENGINE=false

# tini: PID 1 that forwards SIGTERM, so in-flight calls drain (shutdown_grace_s).
# With the local engine: FFmpeg 5 shared libraries, which torchcodec (torchaudio's
# audio loading) opens at run time.
RUN set -eux; \
    apt-get update; \
    pkgs="tini"; \
    if [ "$WITH_LOCAL_ENGINE" = "true" ]; then \
      pkgs="$pkgs libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4"; \
    fi; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 voiceslot \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/voiceslot --create-home \
      --shell /usr/sbin/nologin voiceslot \
 && install -d -o 10001 -g 10001 /var/lib/voiceslot

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/voiceslot \
    VOICESLOT_DATA_DIR=/var/lib/voiceslot \
    VOICESLOT_LISTEN=0.0.0.0:50051 \
    VOICESLOT_METRICS_PORT=9090

LABEL org.opencontainers.image.title="voiceslot" \
      org.opencontainers.image.description="Cloned-voice slot allocator, synthesizer and VoiceSlot operator" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/voiceslot
VOLUME ["/var/lib/voiceslot"]
EXPOSE 50051 9090

ENTRYPOINT ["/usr/bin/tini", "--", "voiceslot"]
CMD ["serve"]
