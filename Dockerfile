# One image for the three services; docker-compose.yml picks the service with its command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY services services
RUN pip install --no-cache-dir . && useradd --system beacon
USER beacon
ENV BEACON_HTTP_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["beacon"]
