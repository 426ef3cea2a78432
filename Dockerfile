# syntax=docker/dockerfile:1
# hoopai-relay: two stages. The first installs the locked dependencies (a layer that only
# changes with requirements.lock), then the project; the second is a slim runtime with the
# same Python, no compilers, and a numeric non-root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Two virtualenvs: /opt/build holds pip and the build backend and stays in this stage;
# /opt/relay, the one the runtime copies, gets no pip or setuptools of its own.
RUN python -m venv /opt/build && python -m venv --without-pip /opt/relay
WORKDIR /src
# The build backend, pinned with hashes like the runtime: pip would otherwise fetch the
# newest hatchling, unverified, for `pip install .`.
COPY requirements-build.lock ./
RUN /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r requirements-build.lock
COPY requirements.lock ./
RUN /opt/build/bin/pip --python /opt/relay/bin/python install --require-hashes --no-deps \
        --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/relay/bin/python install --no-deps --no-index \
        /tmp/dist/*.whl

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/relay/bin:$PATH
COPY --from=build /opt/relay /opt/relay
WORKDIR /app
# routes.toml and relay.toml (all defaults): the settings' relative paths resolve here.
COPY config ./config
USER 10001:10001
EXPOSE 8080 9090
# Exec form: relay is PID 1 and gets SIGTERM itself, to drain and flush before exiting.
ENTRYPOINT ["relay", "serve"]
