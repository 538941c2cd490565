# syntax=docker/dockerfile:1
# Sluice gateway image: build the wheel in one stage, run it as a non-root user in a slim one.
#   docker build -t sluice .
#   docker run -p 8080:8080 -v $PWD/sluice.yaml:/etc/sluice/sluice.yaml:ro sluice
#   docker run -p 8080:8080 sluice up                       # embedded simulated engines

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sluice
ENV PATH=/opt/sluice/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --upgrade pip && pip install . && \
    find /opt/sluice -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 sluice && \
    useradd --system --uid 10001 --gid sluice --home-dir /home/sluice --create-home sluice
COPY --from=build /opt/sluice /opt/sluice
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_PORT=8080
USER 10001:10001
WORKDIR /home/sluice
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SLUICE_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.yaml"]
