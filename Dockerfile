# policyd agent image. Not built in CI (no container engine on these machines); it uses the
# same set-up script as the README so the two cannot drift.
FROM debian:12-slim
WORKDIR /opt/policyd
COPY . .
RUN scripts/setup.sh && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/policyd/.venv/bin:$PATH
# `policyd run` (the kopf agent) is not built yet; until then the image offers the CLI.
ENTRYPOINT ["policyd"]
CMD ["--help"]
