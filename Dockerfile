# paastis in a container: gunicorn app:app on $PORT (default 3000), as a non-root user.
#   docker build -t paastis .
#   docker run -p 3000:3000 -e PROVIDER_NAME=scalingo -e PROVIDER_SCALINGO_API_TOKEN=... paastis
# Settings come from the environment (docs/settings.md); paastis.yml from the image or a mounted file
# (-v ./paastis.yml:/app/paastis.yml:ro).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=3000

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home paastis \
    && mkdir -p /app/.paastis \
    && chown paastis:paastis /app/.paastis

USER paastis
EXPOSE 3000

# Liveness: the workers answer HTTP (a request paastis answers itself, touching no app or provider).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-m", "paastis.healthcheck"]

CMD ["gunicorn", "app:app"]
