# cropcron's services and CLI, for compose.yaml: one image (cropcron:local), built once and used
# by every cropcron service there. No embedded broker or database: compose runs nats and postgres.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies first, at the versions the tests ran with (deploy/requirements.lock, made by
# deploy/lock.py), in their own layer: a code change does not reinstall them.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cropcron ./cropcron
COPY services ./services
COPY shared ./shared
RUN pip install --no-deps . && pip check && rm -rf /src

# Unprivileged user (uid/gid 10001: compose.yaml's comments refer to it). /config/data is where
# compose mounts the jobs' writable volume over the read-only config folder: a new volume takes
# this directory's owner, so the jobs (running as cropcron) can write there.
RUN groupadd --system --gid 10001 cropcron \
 && useradd --system --uid 10001 --gid cropcron --create-home --home-dir /home/cropcron \
        --shell /usr/sbin/nologin cropcron \
 && mkdir -p /config/data /uploads \
 && chown cropcron:cropcron /config/data
USER cropcron
WORKDIR /home/cropcron

# compose.yaml sets the command per service: `cropcron serve timer|runner|history|...`.
CMD ["cropcron", "--help"]
