# siar in a container: python:3.11-slim, non-root, store and keys on the /var/lib/siar volume,
# config from /etc/siar/config.toml, secrets from the environment. See docs/operations.md
# ("Container"); compose.yaml runs it with PostgreSQL 15. Linted by hadolint in the tests, and
# tests/test_container.py runs this file's install and start commands in a fresh venv.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot/ bot/
COPY channels/ channels/
# The dependency ranges live in pyproject.toml ('.' is this checkout, with the PostgreSQL driver).
RUN python -m venv /opt/siar && /opt/siar/bin/pip install '.[postgres]'

FROM python:3.11-slim
LABEL org.opencontainers.image.title="siar" \
      org.opencontainers.image.description="News feeds to Telegram, X, Mastodon, Bluesky, Discord and Web Push, each story exactly once"
RUN groupadd --system --gid 10001 siar \
    && useradd --system --uid 10001 --gid siar --home-dir /var/lib/siar --no-create-home \
       --shell /usr/sbin/nologin siar \
    && install -d -o siar -g siar -m 0750 /var/lib/siar \
    && install -d -m 0755 /etc/siar
COPY --from=build /opt/siar /opt/siar
# SIAR_STORE_URL, SIAR_METRICS_LISTEN and SIAR_WEB_LISTEN are read by the config file
# (examples/container/config.toml): the SQLite store on the volume unless compose names
# PostgreSQL, and both HTTP servers on every interface of the container (publish the ports
# on the host's loopback or behind a proxy: /metrics and /readyz carry no authentication).
ENV PATH=/opt/siar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIAR_CONFIG=/etc/siar/config.toml \
    SIAR_STORE_URL=sqlite:////var/lib/siar/siar.db \
    SIAR_METRICS_LISTEN=0.0.0.0:9464 \
    SIAR_WEB_LISTEN=0.0.0.0:8080
# Numeric, so that orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/siar
VOLUME ["/var/lib/siar"]
# 8080: web push subscribe page ([webpush] listen); 9464: /metrics, /healthz, /readyz ([metrics] listen)
EXPOSE 8080 9464
# slim has no curl: Python's urllib asks /healthz; a 503 or no answer raises, so the exit code is 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SIAR_METRICS_LISTEN', ':9464').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# SIGTERM: polling stops, in-flight posts get [daemon] shutdown_grace, siar exits 0.
STOPSIGNAL SIGTERM
CMD ["siar", "run"]
