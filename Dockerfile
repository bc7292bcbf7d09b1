# One image for every role: the receiver by default, `worker` and `console` as the command (see compose.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY handlers ./handlers
COPY workers ./workers
COPY api ./api
# With the otel extra: traces are exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set at run time.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[otel]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RUNINFRA_ARTIFACTS_DIR=/data/artifacts
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --create-home app
USER 10001:10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"]
ENTRYPOINT ["runinfra-webhooks"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
