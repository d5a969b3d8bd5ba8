# cropcron services (timer, runner, history) and CLI, for compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
COPY cropcron ./cropcron
COPY services ./services
COPY shared ./shared
RUN pip install . && rm -rf /src

# Unprivileged user; uid/gid 10001 are referred to in compose.yaml's comments.
RUN groupadd --system --gid 10001 cropcron \
 && useradd --system --uid 10001 --gid cropcron --create-home --home-dir /home/cropcron \
        --shell /usr/sbin/nologin cropcron
USER cropcron
WORKDIR /home/cropcron

# compose.yaml sets the command per service: `cropcron serve timer|runner|history`.
CMD ["cropcron", "--help"]
