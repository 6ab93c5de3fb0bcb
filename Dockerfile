# Fleet Planner image: one image, two processes -
#   docker run IMAGE serve --policy ... --listen 0.0.0.0:7070 [--leader-elect ...]   (global planner)
#   docker run IMAGE agent --config /etc/fleet-agent/agent.yaml                       (one agent per DGD)
# The chart (charts/fleet-planner) runs both. Engine profiles are shipped at /opt/fleet-planner/profiles.
# The base is pinned by version tag; pin it by digest too in your registry (`FROM python:...@sha256:...`).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleet_planner ./fleet_planner
COPY fleet_sim ./fleet_sim
COPY local_agent ./local_agent
COPY global_planner ./global_planner
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-compile . && /opt/venv/bin/pip check

FROM python:3.11.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
RUN groupadd --system --gid 10001 fleet && useradd --system --uid 10001 --gid fleet --no-create-home fleet
COPY --from=build /opt/venv /opt/venv
COPY examples/profiles /opt/fleet-planner/profiles
COPY policies /opt/fleet-planner/policies
USER 10001:10001
WORKDIR /var/lib/fleet-planner
EXPOSE 7070 9090 9100
ENTRYPOINT ["fleet-planner"]
CMD ["--help"]
