# The gateway's image: Python 3.13 (the G.711 codecs come from audioop-lts), runtime dependencies
# only, a non-root user. The pip steps live in deploy/docker-steps.sh: CI has no Docker engine, so
# deploy/check_image.py replays this file's steps in a fresh venv, running that same script.

# Build stage: only the wheel leaves it (no source tree or build tools in the final image).
FROM python:3.13-slim AS build
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY deploy/docker-steps.sh /src/deploy/docker-steps.sh
RUN sh /src/deploy/docker-steps.sh wheel /src /wheels

FROM python:3.13-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
COPY deploy/docker-steps.sh /tmp/docker-steps.sh
RUN sh /tmp/docker-steps.sh install /wheels \
    && rm -rf /wheels /tmp/docker-steps.sh \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Plain python: the slim image has no curl. PORT is the variable the example config reads.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"]
# Exec form: the gateway is PID 1 itself and gets docker stop's SIGTERM, which starts its drain.
# It starts no child processes, so it needs no init to reap them.
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/config/agents.yaml"]
