FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core core
COPY ml ml
COPY api api
COPY feedback feedback
COPY rewards rewards
COPY trainers trainers
COPY serving serving
COPY demo demo
COPY migrations migrations
# The collector needs no ML stack; training workers and an in-process gateway are built with EXTRAS="[train]".
# torch from PyPI is its CUDA build on Linux; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU one.
ARG EXTRAS=""
ARG TORCH_INDEX_URL=""
RUN if [ -n "$EXTRAS" ]; then \
        pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}; \
    fi && pip install --no-cache-dir ".$EXTRAS"
ENV EDITLOOP_DATA_DIR=/data
EXPOSE 8000
CMD ["editloop", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
