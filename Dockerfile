# policyd agent image: `policyd run` on a slim Debian with libnftables.
# It installs with the same script as the README (scripts/setup.sh), so the two cannot
# drift. There is no container engine on the development machines: this file is kept
# minimal and is not built in CI (the Helm chart is linted, rendered and schema-checked).
FROM debian:12-slim
WORKDIR /opt/policyd
COPY pyproject.toml README.md ./
COPY policyd ./policyd
COPY scripts/setup.sh ./scripts/setup.sh
RUN apt-get update -qq \
 && scripts/setup.sh \
 && rm -rf /var/lib/apt/lists/* /root/.cache
ENV PATH=/opt/policyd/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# The chart sets NODE_NAME and POLICYD_* (see charts/policyd/values.yaml).
ENTRYPOINT ["policyd"]
CMD ["run"]
